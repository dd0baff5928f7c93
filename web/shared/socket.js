// The reconnecting socket shared by both pages.
//
// - Authenticates with `?token=` (browsers cannot set headers on a
//   WebSocket) and, after a drop, resumes with `?since=<lastSeq>`: the
//   server replays what was missed right after `welcome`, then sends
//   `sync_result`.
// - User events carry `seq`: an event is applied once, in order (seq ≤ last
//   applied is ignored; a gap asks for `sync`). A 7005 reset tells the page
//   to reload over REST and continue from the server's `last_seq`.
// - Reconnects with exponential backoff and jitter (cap 10 s); sends the
//   `ping` command every 20 s like the mini-program and treats a silent
//   socket as dead.
// - Commands get exactly one reply, matched by `id`. Draws and exchanges are
//   re-sent with the same id after a reconnect (the id is the idempotency
//   key, so nothing is charged twice).

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 10_000;
const PING_EVERY_MS = 20_000;
/** No frame at all for this long (two pings unanswered): the socket is dead. */
const SILENCE_MS = 45_000;
const COMMAND_TIMEOUT_MS = 15_000;
/** A retryable command gives up after this long across reconnects. */
const RETRY_TIMEOUT_MS = 60_000;

/** Close codes after which reconnecting would not help. */
const FINAL_CLOSE = new Map([
  [4002, '已在其他设备或窗口打开新的连接，本页连接已停止'],
]);

export class SocketError extends Error {
  constructor(code, msg, data = null) {
    super(msg);
    this.code = code;
    this.msg = msg;
    this.data = data;
  }
}

export class RealtimeSocket {
  /**
   * @param {object} o
   * @param {import('./api.js').Api} o.api  tokens and refresh
   * @param {(type:string, data:any, frame:object)=>void} o.onEvent  every event applied (user events once, in seq order)
   * @param {(state:string, info:object)=>void} o.onState  'connecting'|'open'|'reconnecting'|'closed'
   * @param {(info:{last_seq:number, welcome?:object})=>void} [o.onReset]  7005: reload over REST
   * @param {(welcome:object, resumed:boolean)=>void} [o.onWelcome]
   * @param {(seq:number)=>void} [o.onSeq]  the last applied seq changed
   */
  constructor({ api, onEvent, onState, onReset, onWelcome, onSeq }) {
    this.api = api;
    this.onEvent = onEvent || (() => {});
    this.onState = onState || (() => {});
    this.onReset = onReset || (() => {});
    this.onWelcome = onWelcome || (() => {});
    this.onSeq = onSeq || (() => {});
    this.ws = null;
    this.state = 'closed';
    this.lastSeq = null; // the newest applied user event; null before the first welcome
    this.attempt = 0;
    this.wanted = false;
    this.pending = new Map(); // id → {type, data, resolve, reject, timer, retry, deadline}
    this.syncing = false;
    this.retryTimer = null;
    this.pingTimer = null;
    this.lastFrameAt = 0;
    this.everOpen = false;
    this.closeInfo = null;
    window.addEventListener('online', () => {
      if (this.wanted && this.state !== 'open') this.#reconnectNow();
    });
    window.addEventListener('offline', () => {
      if (this.ws) this.ws.close(); // do not wait for the silence timeout
    });
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible' && this.wanted && this.state === 'reconnecting') this.#reconnectNow();
    });
  }

  start() {
    this.wanted = true;
    if (!this.ws && !this.retryTimer) this.#connect();
  }

  /** Stops for good (logout). Pending commands fail. */
  stop() {
    this.wanted = false;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    clearInterval(this.pingTimer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = ws.onmessage = ws.onerror = ws.onopen = null;
      try { ws.close(1000, 'bye'); } catch { /* already closed */ }
    }
    for (const [id, p] of this.pending) this.#settle(id, p, null, new SocketError(-1, '连接已关闭'));
    this.lastSeq = null;
    this.#setState('closed', {});
  }

  #setState(state, info) {
    this.state = state;
    this.onState(state, info);
  }

  #url() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const q = new URLSearchParams({ token: this.api.token || '' });
    if (this.lastSeq !== null) q.set('since', String(this.lastSeq));
    return `${proto}//${location.host}/ws?${q}`;
  }

  async #connect() {
    this.retryTimer = null;
    if (!this.wanted) return;
    if (!this.api.token) { this.stop(); return; }
    this.#setState(this.everOpen || this.attempt > 0 ? 'reconnecting' : 'connecting', { attempt: this.attempt });
    // A socket upgrade refused for an expired token looks like any other
    // failure to the browser: refresh first when the token is near its end,
    // and after repeated failures ask REST whether the session still lives.
    try {
      if (this.api.expiresSoon(60_000)) await this.api.refresh();
      else if (this.attempt >= 2 && this.attempt % 2 === 0) await this.api.get('/api/auth/verify');
    } catch (err) {
      if (!this.api.token) { this.stop(); return; } // the session ended (api emitted 'logout')
    }
    if (!this.wanted) return;
    let ws;
    try {
      ws = new WebSocket(this.#url());
    } catch {
      this.#scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.welcomed = false;
    ws.onopen = () => { this.lastFrameAt = Date.now(); };
    ws.onmessage = (e) => this.#onFrame(e.data);
    ws.onerror = () => { /* onclose follows */ };
    ws.onclose = (e) => this.#onClose(ws, e);
  }

  #onClose(ws, e) {
    if (this.ws !== ws) return;
    this.ws = null;
    clearInterval(this.pingTimer);
    this.closeInfo = { code: e.code, reason: e.reason };
    // Replies that will never come: plain reads fail now; draws and
    // exchanges wait to be re-sent with the same id.
    for (const [id, p] of this.pending) {
      if (!p.retry || Date.now() > p.deadline) this.#settle(id, p, null, new SocketError(-1, '连接已断开，请稍后重试'));
      else { clearTimeout(p.timer); p.sent = false; }
    }
    if (!this.wanted) { this.#setState('closed', this.closeInfo); return; }
    if (FINAL_CLOSE.has(e.code)) {
      this.wanted = false;
      this.#setState('closed', { ...this.closeInfo, msg: FINAL_CLOSE.get(e.code) });
      return;
    }
    if (e.code === 4001) {
      // Token expired or session revoked: a refresh decides which.
      this.api.refresh().then(() => this.#reconnectNow(), () => this.stop());
      this.#setState('reconnecting', this.closeInfo);
      return;
    }
    this.#scheduleReconnect(e.code === 4003 ? 5000 : 0);
  }

  #scheduleReconnect(minDelay = 0) {
    clearTimeout(this.retryTimer);
    // Exponential backoff with "equal jitter": half fixed, half random, so
    // a crowd of clients dropped together does not come back in lockstep.
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    const delay = Math.max(minDelay, ceiling / 2 + Math.random() * (ceiling / 2));
    this.attempt += 1;
    this.#setState('reconnecting', { ...this.closeInfo, attempt: this.attempt, retry_in_ms: Math.round(delay) });
    this.retryTimer = setTimeout(() => this.#connect(), delay);
  }

  #reconnectNow() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.ws) return;
    this.#connect();
  }

  #onFrame(text) {
    this.lastFrameAt = Date.now();
    let f;
    try { f = JSON.parse(text); } catch { return; }
    if (!f || typeof f.type !== 'string') return;
    if (f.type === 'reply') { this.#onReply(f); return; }
    if (f.type === 'welcome') { this.#onWelcome(f.data || {}); return; }
    if (f.type === 'sync_result') { this.#onSyncDone(f.code, f.msg, f.data); return; }
    if (f.type === 'error') { this.onEvent('error', { code: f.code, msg: f.msg }, f); return; }
    if (typeof f.seq === 'number') { this.#onUserEvent(f); return; }
    this.onEvent(f.type, f.data, f);
  }

  #onWelcome(w) {
    const resumed = this.lastSeq !== null;
    if (!resumed) {
      this.lastSeq = Number(w.last_seq) || 0;
      this.onSeq(this.lastSeq);
    }
    this.welcomed = true;
    this.everOpen = true;
    this.attempt = 0;
    this.closeInfo = null;
    this.#setState('open', { resumed });
    this.onWelcome(w, resumed);
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => this.#heartbeat(), PING_EVERY_MS);
    // Draws and exchanges whose reply was lost: same id again.
    for (const [id, p] of this.pending) if (!p.sent) this.#transmit(id, p);
  }

  #heartbeat() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - this.lastFrameAt > SILENCE_MS) {
      // Half-open connection (the network went away without a FIN).
      this.ws.close(4000, 'silent');
      this.#onClose(this.ws, { code: 4000, reason: 'no frames' });
      return;
    }
    this.command('ping').catch(() => {});
  }

  #onUserEvent(f) {
    const seq = f.seq;
    if (this.lastSeq !== null && seq <= this.lastSeq) return; // already applied
    if (this.lastSeq !== null && seq > this.lastSeq + 1) {
      // A gap: the server will replay from our last seq, this one included.
      this.#sync();
      return;
    }
    this.lastSeq = seq;
    this.onSeq(seq);
    this.onEvent(f.type, f.data, f);
  }

  #sync() {
    if (this.syncing || this.lastSeq === null) return;
    this.syncing = true;
    this.command('sync', { since: this.lastSeq })
      .then((d) => this.#onSyncDone(0, 'success', d), (err) => this.#onSyncDone(err.code, err.msg, err.data))
      .finally(() => { this.syncing = false; });
  }

  #onSyncDone(code, msg, data) {
    if (code === 7005 || data?.reset) {
      // Too far behind to replay: the page reloads over REST.
      this.lastSeq = Number(data?.last_seq) || 0;
      this.onSeq(this.lastSeq);
      this.onReset({ last_seq: this.lastSeq, code, msg });
    }
  }

  #onReply(f) {
    const p = this.pending.get(f.id);
    if (!p) return;
    if (f.code === 0) this.#settle(f.id, p, f.data, null);
    else this.#settle(f.id, p, null, new SocketError(f.code, f.msg, f.data ?? null));
  }

  #settle(id, p, data, err) {
    clearTimeout(p.timer);
    clearTimeout(p.giveUp);
    this.pending.delete(id);
    if (err) p.reject(err); else p.resolve(data);
  }

  #transmit(id, p) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN || !this.welcomed) return false;
    const frame = { id, type: p.type };
    if (p.data !== undefined) frame.data = p.data;
    this.ws.send(JSON.stringify(frame));
    p.sent = true;
    clearTimeout(p.timer);
    p.timer = setTimeout(() => {
      if (p.retry && Date.now() < p.deadline) { p.sent = false; return; } // re-sent on the next welcome
      this.#settle(id, p, null, new SocketError(-1, '请求超时，请稍后重试'));
    }, COMMAND_TIMEOUT_MS);
    return true;
  }

  get isOpen() { return !!this.ws && this.ws.readyState === WebSocket.OPEN && this.welcomed; }

  /**
   * Sends a command; resolves with the reply's `data` or rejects with a
   * SocketError carrying the reply's `code`/`msg`/`data`. `retry`: re-send
   * with the same id after a reconnect (for commands whose id is an
   * idempotency key).
   */
  command(type, data, { id, retry = false } = {}) {
    const cid = id || `c-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
    return new Promise((resolve, reject) => {
      const p = { type, data, resolve, reject, retry, sent: false, timer: null, deadline: Date.now() + RETRY_TIMEOUT_MS };
      this.pending.set(cid, p);
      if (retry) p.giveUp = setTimeout(() => this.#settle(cid, p, null, new SocketError(-1, '网络异常，结果未知，请稍后在记录中查看')), RETRY_TIMEOUT_MS);
      if (!this.#transmit(cid, p) && !retry) this.#settle(cid, p, null, new SocketError(-1, '实时连接未建立，请稍后重试'));
    });
  }

  /** After a token refresh: move this socket onto the new token. */
  refreshToken(access_token) {
    if (this.isOpen) this.command('auth.refresh', { access_token }).catch(() => {});
  }

  /** Test/debug helper: drop the socket as a network failure would. */
  dropForTest() {
    if (this.ws) this.ws.close(4000, 'test drop');
  }
}
