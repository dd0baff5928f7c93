// The prize wheel on a <canvas>.
//
// Geometry (the page's reading of the server's `angle`): a prize's segment
// is centred on its `angle`, in degrees clockwise from the top of the wheel
// at rest, and spans ±22.5°. The pointer is fixed at the top. Turning the
// wheel clockwise by `rot` degrees brings the wheel angle
// `(360 − rot) mod 360` under the pointer, so landing on a prize at `a`
// means stopping at `rot ≡ 360 − a (mod 360)`.
//
// While the server draws, the wheel spins freely; `land(angle)` then eases
// it out onto that angle. When it stops, the canvas carries
// `data-landed-angle` (the wheel angle under the pointer), `data-prize-id`
// and `data-spinning="false"`.

const SEG = 45;
const FREE_SPEED = 1.08; // degrees per ms (3 turns a second)
const reducedMotion = () => window.matchMedia?.('(prefers-reduced-motion: reduce)').matches;

export class Wheel {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.prizes = [];
    this.rot = 0;
    this.phase = 'idle';
    this.speed = 0;
    this.raf = 0;
    canvas.dataset.spinning = 'false';
    this.resize = this.resize.bind(this);
    new ResizeObserver(this.resize).observe(canvas);
    this.resize();
  }

  setPrizes(prizes) {
    this.prizes = [...prizes].sort((a, b) => a.angle - b.angle);
    const names = this.prizes.map((p) => p.prize_name).join('、');
    this.canvas.setAttribute('aria-label', `幸运转盘，共 ${this.prizes.length} 个奖项：${names}`);
    this.draw();
  }

  resize() {
    const css = this.canvas.getBoundingClientRect().width || 300;
    const dpr = Math.min(window.devicePixelRatio || 1, 3);
    const px = Math.round(css * dpr);
    if (this.canvas.width !== px) {
      this.canvas.width = px;
      this.canvas.height = px;
    }
    this.draw();
  }

  /** The wheel angle under the pointer now. */
  underPointer() {
    return ((360 - (this.rot % 360)) % 360 + 360) % 360;
  }

  draw() {
    const { ctx, canvas } = this;
    const W = canvas.width;
    const c = W / 2;
    const R = W / 2 - W * 0.02;
    const r = R * 0.9; // segment radius inside the rim
    ctx.clearRect(0, 0, W, W);

    // rim
    ctx.beginPath();
    ctx.arc(c, c, R, 0, Math.PI * 2);
    ctx.fillStyle = '#7c2d12';
    ctx.fill();

    const rad = (d) => (d * Math.PI) / 180;
    if (!this.prizes.length) {
      ctx.beginPath();
      ctx.arc(c, c, r, 0, Math.PI * 2);
      ctx.fillStyle = '#f3efe9';
      ctx.fill();
    }
    for (const p of this.prizes) {
      const mid = p.angle + this.rot - 90; // canvas angle of the segment's centre
      ctx.beginPath();
      ctx.moveTo(c, c);
      ctx.arc(c, c, r, rad(mid - SEG / 2), rad(mid + SEG / 2));
      ctx.closePath();
      ctx.fillStyle = p.color || '#ddd';
      ctx.fill();
      ctx.strokeStyle = 'rgba(255,255,255,.85)';
      ctx.lineWidth = W * 0.006;
      ctx.stroke();

      // label: tangential, upright when the segment is at the top
      ctx.save();
      ctx.translate(c, c);
      ctx.rotate(rad(mid + 90));
      ctx.fillStyle = '#2b1a10';
      ctx.textAlign = 'center';
      ctx.textBaseline = 'middle';
      let size = W * 0.05;
      ctx.font = `600 ${size}px system-ui, "Noto Sans CJK SC", sans-serif`;
      const maxW = r * 0.5;
      const tw = ctx.measureText(p.prize_name).width;
      if (tw > maxW) {
        size *= maxW / tw;
        ctx.font = `600 ${size}px system-ui, "Noto Sans CJK SC", sans-serif`;
      }
      ctx.fillText(p.prize_name, 0, -r * 0.72);
      if (p.is_activity) {
        ctx.font = `${W * 0.034}px system-ui, sans-serif`;
        ctx.fillText('★', 0, -r * 0.56);
      }
      ctx.restore();
    }

    // bulbs on the rim
    for (let i = 0; i < 24; i++) {
      const a = rad(i * 15 + this.rot * 0);
      ctx.beginPath();
      ctx.arc(c + Math.cos(a) * (R + r) / 2, c + Math.sin(a) * (R + r) / 2, W * 0.011, 0, Math.PI * 2);
      ctx.fillStyle = i % 2 ? '#fde68a' : '#fff7ed';
      ctx.fill();
    }

    // hub
    ctx.beginPath();
    ctx.arc(c, c, r * 0.2, 0, Math.PI * 2);
    ctx.fillStyle = '#fff';
    ctx.fill();
    ctx.beginPath();
    ctx.arc(c, c, r * 0.15, 0, Math.PI * 2);
    ctx.fillStyle = '#c2410c';
    ctx.fill();

    // pointer (fixed, at the top, pointing down into the wheel)
    ctx.beginPath();
    ctx.moveTo(c - W * 0.045, W * 0.005);
    ctx.lineTo(c + W * 0.045, W * 0.005);
    ctx.lineTo(c, W * 0.11);
    ctx.closePath();
    ctx.fillStyle = '#facc15';
    ctx.strokeStyle = '#7c2d12';
    ctx.lineWidth = W * 0.008;
    ctx.fill();
    ctx.stroke();
  }

  /** Starts spinning freely (while waiting for the server's draw). */
  spin() {
    cancelAnimationFrame(this.raf);
    this.phase = 'free';
    this.canvas.dataset.spinning = 'true';
    delete this.canvas.dataset.landedAngle;
    delete this.canvas.dataset.prizeId;
    const t0 = performance.now();
    let last = t0;
    const step = (now) => {
      if (this.phase !== 'free') return;
      const dt = now - last;
      last = now;
      this.speed = FREE_SPEED * Math.min(1, (now - t0) / 400); // speed up over 0.4 s
      this.rot = (this.rot + this.speed * dt) % 360;
      this.draw();
      this.raf = requestAnimationFrame(step);
    };
    this.raf = requestAnimationFrame(step);
  }

  /**
   * Eases out onto the prize at `angle`. Resolves when the wheel rests;
   * then the canvas says what it landed on.
   */
  land(angle, prizeId) {
    cancelAnimationFrame(this.raf);
    const a = ((Number(angle) % 360) + 360) % 360;
    const target = (360 - a) % 360; // rot at rest, mod 360
    const r0 = this.rot;
    const quick = reducedMotion();
    let d = (((target - r0) % 360) + 360) % 360; // shortest forward distance
    d += quick ? 360 : 360 * 3; // a few full turns for the show
    const v0 = Math.max(this.speed, 0.3);
    // Ease-out cubic starts at 3·D/T: match the free spin's speed, within bounds.
    const T = quick ? 500 : Math.min(5200, Math.max(2600, (3 * d) / v0));
    this.phase = 'landing';
    return new Promise((resolve) => {
      const t0 = performance.now();
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        cancelAnimationFrame(this.raf);
        clearTimeout(guard);
        this.rot = target; // exact: the pointer sits on the segment's centre
        this.phase = 'idle';
        this.speed = 0;
        this.draw();
        this.canvas.dataset.landedAngle = String(this.underPointer());
        if (prizeId !== undefined && prizeId !== null) this.canvas.dataset.prizeId = String(prizeId);
        this.canvas.dataset.spinning = 'false';
        resolve();
      };
      // Animation frames stop in a hidden tab: the result must still land.
      const guard = setTimeout(finish, T + 800);
      const step = (now) => {
        const t = Math.min(1, (now - t0) / T);
        if (t >= 1) { finish(); return; }
        this.rot = r0 + d * (1 - (1 - t) ** 3);
        this.draw();
        this.raf = requestAnimationFrame(step);
      };
      this.raf = requestAnimationFrame(step);
    });
  }

  /** The draw failed: slow to a stop where it is. */
  halt() {
    cancelAnimationFrame(this.raf);
    const r0 = this.rot;
    const v0 = this.phase === 'free' ? this.speed : 0;
    const T = v0 ? 700 : 0;
    this.phase = 'landing';
    return new Promise((resolve) => {
      const t0 = performance.now();
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        cancelAnimationFrame(this.raf);
        clearTimeout(guard);
        this.phase = 'idle';
        this.speed = 0;
        this.draw();
        this.canvas.dataset.spinning = 'false';
        resolve();
      };
      const guard = setTimeout(finish, T + 500);
      const step = (now) => {
        const t = T ? Math.min(1, (now - t0) / T) : 1;
        this.rot = (r0 + (v0 * T / 3) * (1 - (1 - t) ** 3)) % 360;
        if (t >= 1) { finish(); return; }
        this.draw();
        this.raf = requestAnimationFrame(step);
      };
      this.raf = requestAnimationFrame(step);
    });
  }
}
