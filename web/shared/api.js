// REST client: the `{code, msg, data}` envelope, the session's tokens (in
// sessionStorage), refresh before expiry, logout. Every failure becomes an
// ApiError whose `msg` is the server's text, exactly as it was sent.

/** A refusal or failure. `code`/`msg`/`data` come from the server's envelope. */
export class ApiError extends Error {
  constructor(code, msg, data = null, status = 0) {
    super(msg);
    this.code = code;
    this.msg = msg;
    this.data = data;
    this.status = status;
  }
}

/** Client-side codes (never sent by the server): no answer at all. */
export const NETWORK_ERROR = -1;
const NETWORK_MSG = '网络异常，请检查网络后重试';
const BAD_REPLY_MSG = '服务器返回了无法识别的内容';

/** The session's tokens are gone for good: log in again. */
const SESSION_DEAD = new Set([4001, 4002, 1004, 1005, 1006]);
/** The access token expired: refresh and retry once. */
const TOKEN_EXPIRED = 4003;
/** Refresh this long before the access token expires. */
const REFRESH_MARGIN_MS = 120_000;

/**
 * One per page. `storageKey` keeps the console's and the demo's sessions
 * apart when both are open in one browser.
 */
export class Api {
  constructor(storageKey) {
    this.storageKey = storageKey;
    this.session = this.#load();
    this.listeners = new Set();
    this.refreshing = null;
    this.refreshTimer = null;
    if (this.session) this.#schedule();
    document.addEventListener('visibilitychange', () => {
      // Timers sleep in background tabs: catch up when the page is seen again.
      if (document.visibilityState === 'visible' && this.session && this.expiresSoon()) this.refresh().catch(() => {});
    });
  }

  /** `fn(kind, detail)`: kind is 'login' | 'refresh' | 'logout' | 'user'. */
  on(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  #emit(kind, detail) {
    for (const fn of this.listeners) {
      try { fn(kind, detail); } catch (e) { console.error(e); }
    }
  }

  #load() {
    try {
      const s = JSON.parse(sessionStorage.getItem(this.storageKey) || 'null');
      return s && s.access_token && s.refresh_token ? s : null;
    } catch { return null; }
  }

  #save() {
    if (this.session) sessionStorage.setItem(this.storageKey, JSON.stringify(this.session));
    else sessionStorage.removeItem(this.storageKey);
  }

  get token() { return this.session?.access_token || null; }
  get user() { return this.session?.user_info || null; }

  setUser(user_info) {
    if (!this.session) return;
    this.session.user_info = user_info;
    this.#save();
    this.#emit('user', user_info);
  }

  expiresSoon(margin = REFRESH_MARGIN_MS) {
    return !!this.session && Date.now() > this.session.expires_at - margin;
  }

  #schedule() {
    clearTimeout(this.refreshTimer);
    if (!this.session) return;
    const wait = Math.max(this.session.expires_at - REFRESH_MARGIN_MS - Date.now(), 1000);
    this.refreshTimer = setTimeout(() => this.refresh().catch(() => {}), Math.min(wait, 2 ** 31 - 1));
  }

  #store(data, user_info) {
    this.session = {
      access_token: data.access_token,
      refresh_token: data.refresh_token,
      expires_at: Date.now() + Number(data.expires_in || 7200) * 1000,
      user_info: user_info ?? this.session?.user_info ?? null,
    };
    this.#save();
    this.#schedule();
  }

  /**
   * One request. Returns `data` on `code == 0`; throws ApiError otherwise.
   * `body` is sent as JSON, `form` as multipart; `idempotencyKey` sets the
   * header. An expired access token is refreshed once and the call retried.
   */
  async request(path, { method = 'GET', body, form, query, auth = true, idempotencyKey, raw, retried = false } = {}) {
    const headers = { accept: 'application/json' };
    let payload;
    if (form) payload = form;
    else if (raw !== undefined) { payload = raw; headers['content-type'] = 'application/json'; }
    else if (body !== undefined) { payload = JSON.stringify(body); headers['content-type'] = 'application/json'; }
    if (auth) {
      if (!this.token) throw new ApiError(4001, '缺少访问令牌', null, 401);
      if (!retried && this.expiresSoon(10_000)) await this.refresh().catch(() => {});
      headers.authorization = `Bearer ${this.token}`;
    }
    if (idempotencyKey) headers['idempotency-key'] = idempotencyKey;
    let url = path;
    if (query) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
      const s = q.toString();
      if (s) url += `?${s}`;
    }
    let res;
    try {
      res = await fetch(url, { method, headers, body: payload, credentials: 'same-origin' });
    } catch {
      throw new ApiError(NETWORK_ERROR, NETWORK_MSG, null, 0);
    }
    let env;
    try {
      env = await res.json();
    } catch {
      throw new ApiError(NETWORK_ERROR, res.ok ? BAD_REPLY_MSG : `${BAD_REPLY_MSG}（HTTP ${res.status}）`, null, res.status);
    }
    if (!env || typeof env.code !== 'number') throw new ApiError(NETWORK_ERROR, BAD_REPLY_MSG, null, res.status);
    if (env.code === 0) return env.data;
    const err = new ApiError(env.code, env.msg, env.data ?? null, res.status);
    if (auth && env.code === TOKEN_EXPIRED && !retried) {
      await this.refresh();
      return this.request(path, { method, body, form, query, auth, idempotencyKey, raw, retried: true });
    }
    if (auth && SESSION_DEAD.has(env.code)) this.#end(err);
    throw err;
  }

  get(path, query) { return this.request(path, { query }); }
  post(path, body, opts = {}) { return this.request(path, { method: 'POST', body, ...opts }); }
  put(path, body) { return this.request(path, { method: 'PUT', body }); }

  sendCode(phone) {
    return this.request('/api/auth/send-code', { method: 'POST', body: { phone }, auth: false });
  }

  async login(phone, code) {
    const data = await this.request('/api/auth/login', { method: 'POST', body: { phone, code }, auth: false });
    this.#store(data, data.user_info);
    this.#emit('login', data);
    return data;
  }

  /**
   * Rotates the token pair (single flight: refresh tokens are single use).
   * A refused refresh (1004/1005) ends the session.
   */
  refresh() {
    if (!this.session) return Promise.reject(new ApiError(1004, '请重新登录', null, 401));
    if (this.refreshing) return this.refreshing;
    const rt = this.session.refresh_token;
    this.refreshing = (async () => {
      try {
        const data = await this.request('/api/auth/refresh', { method: 'POST', body: { refresh_token: rt }, auth: false });
        this.#store(data);
        this.#emit('refresh', data.access_token);
        return data.access_token;
      } catch (err) {
        if (err.code === NETWORK_ERROR || err.code === 2002 || err.code === 2006 || err.code === 2010) {
          // Try again soon; the access token may still be good.
          clearTimeout(this.refreshTimer);
          this.refreshTimer = setTimeout(() => this.refresh().catch(() => {}), 10_000);
        } else {
          this.#end(err);
        }
        throw err;
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }

  /** Logs out this device, or every device with `all`. */
  async logout(all = false) {
    let error = null;
    if (this.session) {
      try {
        await this.request('/api/auth/logout', { method: 'POST', body: all ? { all: true } : undefined, retried: true });
      } catch (err) {
        error = err;
      }
    }
    this.#end(null);
    if (error && !SESSION_DEAD.has(error.code)) throw error;
  }

  /** Forgets the session; listeners get 'logout' with the reason (or null). */
  #end(reason) {
    const had = !!this.session;
    clearTimeout(this.refreshTimer);
    this.session = null;
    this.#save();
    if (had) this.#emit('logout', reason);
  }
}
