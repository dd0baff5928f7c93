// Small inline-SVG charts (no library): bars for hourly counts, a line for
// live connections, and a pie for the wheel's published odds.

const NS = 'http://www.w3.org/2000/svg';

function el(tag, attrs = {}, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

/** A "nice" upper bound for an axis: 1, 2 or 5 × 10^n, at least 1. */
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

const compact = (n) => (n >= 10000 ? `${Math.round(n / 1000) / 10}万` : String(Math.round(n)));

/**
 * A bar or line chart.
 * @param {object} o
 * @param {'bar'|'line'} o.kind
 * @param {{label:string, value:number, title?:string}[]} o.points
 * @param {string} o.title   accessible name
 * @param {string} [o.color]
 * @param {number} [o.width] viewBox width (the SVG scales to its box)
 * @param {number} [o.height]
 * @param {number} [o.labelEvery] show every n-th x label
 */
export function chart({ kind, points, title, color = '#c2410c', width = 560, height = 200, labelEvery = 3 }) {
  const pad = { l: 40, r: 20, t: 12, b: 26 };
  const w = width - pad.l - pad.r;
  const hgt = height - pad.t - pad.b;
  const max = niceMax(Math.max(0, ...points.map((p) => Number(p.value) || 0)));
  const svg = el('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img', 'aria-label': title, preserveAspectRatio: 'xMidYMid meet' });
  svg.append(el('title', {}, title));
  const y = (v) => pad.t + hgt - (hgt * (Number(v) || 0)) / max;

  // grid and y labels: 0, max/2 (when whole), max
  for (const f of [0, 0.5, 1]) {
    const yy = pad.t + hgt - hgt * f;
    svg.append(el('line', { x1: pad.l, x2: pad.l + w, y1: yy, y2: yy, stroke: f === 0 ? '#cfc7bc' : '#eee8e0', 'stroke-width': 1 }));
    // Counts are integers: no "0.5" (or a rounded "1" twice) on the axis.
    if (Number.isInteger(max * f)) svg.append(el('text', { x: pad.l - 6, y: yy + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#8c959f' }, compact(max * f)));
  }

  const n = points.length;
  if (!n) {
    svg.append(el('text', { x: pad.l + w / 2, y: pad.t + hgt / 2, 'text-anchor': 'middle', 'font-size': 13, fill: '#8c959f' }, '暂无数据'));
    return svg;
  }
  const step = w / n;
  const xLabel = (i, x) => {
    if (i % labelEvery === 0 || i === n - 1) {
      svg.append(el('text', { x, y: height - 8, 'text-anchor': 'middle', 'font-size': 11, fill: '#8c959f' }, points[i].label));
    }
  };

  if (kind === 'bar') {
    const bw = Math.max(2, step * 0.68);
    points.forEach((p, i) => {
      const x = pad.l + step * i + (step - bw) / 2;
      const top = y(p.value);
      const r = el('rect', { x, y: top, width: bw, height: Math.max(0, pad.t + hgt - top), rx: Math.min(3, bw / 3), fill: color });
      r.append(el('title', {}, p.title || `${p.label}：${p.value}`));
      svg.append(r);
      xLabel(i, x + bw / 2);
    });
  } else {
    const xs = points.map((_, i) => pad.l + (n === 1 ? w / 2 : (w * i) / (n - 1)));
    const d = points.map((p, i) => `${i ? 'L' : 'M'}${xs[i].toFixed(1)},${y(p.value).toFixed(1)}`).join(' ');
    const area = `${d} L${xs[n - 1].toFixed(1)},${pad.t + hgt} L${xs[0].toFixed(1)},${pad.t + hgt} Z`;
    svg.append(el('path', { d: area, fill: color, 'fill-opacity': 0.12 }));
    svg.append(el('path', { d, fill: 'none', stroke: color, 'stroke-width': 2, 'stroke-linejoin': 'round' }));
    const every = Math.max(1, Math.ceil(n / 8));
    points.forEach((p, i) => {
      const c = el('circle', { cx: xs[i], cy: y(p.value), r: n > 40 ? 1.5 : 3, fill: color });
      c.append(el('title', {}, p.title || `${p.label}：${p.value}`));
      svg.append(c);
      if (i % every === 0 || i === n - 1) svg.append(el('text', { x: xs[i], y: height - 8, 'text-anchor': 'middle', 'font-size': 11, fill: '#8c959f' }, p.label));
    });
  }
  return svg;
}

/**
 * A pie of the wheel's odds: slices sized by weight (ten-thousandths, integers).
 * @param {{name:string, color:string, weight:number}[]} slices
 */
export function oddsPie(slices, { size = 220, title = '公示概率' } = {}) {
  const svg = el('svg', { viewBox: `0 0 ${size} ${size}`, class: 'chart pie', role: 'img', 'aria-label': title, width: size, height: size });
  svg.append(el('title', {}, title));
  const c = size / 2;
  const r = size / 2 - 4;
  const total = slices.reduce((s, x) => s + Math.max(0, x.weight || 0), 0);
  if (!total) {
    svg.append(el('circle', { cx: c, cy: c, r, fill: '#eee8e0' }));
    return svg;
  }
  let acc = 0;
  for (const s of slices) {
    const wgt = Math.max(0, s.weight || 0);
    if (!wgt) continue;
    const a0 = (acc / total) * Math.PI * 2 - Math.PI / 2;
    acc += wgt;
    const a1 = (acc / total) * Math.PI * 2 - Math.PI / 2;
    let shape;
    if (wgt === total) shape = el('circle', { cx: c, cy: c, r, fill: s.color });
    else {
      const large = a1 - a0 > Math.PI ? 1 : 0;
      const p0 = [c + r * Math.cos(a0), c + r * Math.sin(a0)];
      const p1 = [c + r * Math.cos(a1), c + r * Math.sin(a1)];
      shape = el('path', {
        d: `M${c},${c} L${p0[0].toFixed(2)},${p0[1].toFixed(2)} A${r},${r} 0 ${large} 1 ${p1[0].toFixed(2)},${p1[1].toFixed(2)} Z`,
        fill: s.color, stroke: '#fff', 'stroke-width': 1.5,
      });
    }
    shape.append(el('title', {}, `${s.name}：${s.label || ''}`));
    svg.append(shape);
  }
  svg.append(el('circle', { cx: c, cy: c, r: r * 0.38, fill: '#fff' }));
  return svg;
}
