// Small DOM helpers shared by the console and the guest demo. No framework:
// `h()` builds elements, the rest formats values and shows messages.

/** The restaurant's name in every header (one place to change it). */
export const BRAND = { name: '禾味小馆', short: '禾味' };

/**
 * Builds an element. `attrs`: `class`, `text`, `html` is not supported on
 * purpose (everything from the server goes in as text), `on<event>`
 * handlers, `dataset` object, boolean attributes, anything else as an
 * attribute. Children: nodes, strings, arrays, null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = tag.startsWith('svg:')
    ? document.createElementNS('http://www.w3.org/2000/svg', tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.setAttribute('class', v);
    else if (k === 'style') el.style.cssText = v; // CSSOM: allowed under a strict CSP, unlike a style attribute
    else if (k === 'text') el.textContent = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/**
 * Shows an error in a message area: the server's `msg` exactly as sent
 * (with its code in `data-code` for tests), or a success/info text.
 */
export function showMsg(el, textOrErr, kind = 'error') {
  if (!el) return;
  if (!textOrErr) {
    el.textContent = '';
    el.hidden = true;
    delete el.dataset.code;
    el.dataset.kind = '';
    return;
  }
  const isErr = typeof textOrErr === 'object';
  if (isErr && textOrErr.msg === undefined) console.error(textOrErr); // a bug here, not a refusal
  el.textContent = isErr ? (textOrErr.msg ?? `页面出错：${textOrErr.message || textOrErr}`) : textOrErr;
  el.dataset.kind = isErr ? 'error' : kind;
  if (isErr && textOrErr.code !== undefined) el.dataset.code = String(textOrErr.code);
  else delete el.dataset.code;
  el.hidden = false;
  el.setAttribute('role', isErr || kind === 'error' ? 'alert' : 'status');
}

let toastHost;
/** A short notice at the bottom of the screen (also read by screen readers). */
export function toast(text, kind = 'info', ms = 3200) {
  if (!toastHost) {
    toastHost = h('div', { class: 'toasts', 'aria-live': 'polite', 'data-testid': 'toasts' });
    document.body.append(toastHost);
  }
  const t = h('div', { class: `toast toast-${kind}`, 'data-testid': 'toast', 'data-kind': kind, text });
  toastHost.append(t);
  setTimeout(() => t.remove(), ms);
}

/** `c-<time>-<rand>`: a command id, also the idempotency key. */
export function commandId() {
  const rand = new Uint32Array(2);
  crypto.getRandomValues(rand);
  return `c-${Date.now().toString(36)}-${rand[0].toString(36)}${rand[1].toString(36)}`;
}

const pad = (n) => String(n).padStart(2, '0');
/** RFC 3339 → local `MM-DD HH:mm` (with seconds when asked). */
export function fmtTime(iso, seconds = false) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const s = `${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  return seconds ? `${s}:${pad(d.getSeconds())}` : s;
}

/** Money (a JSON number with two places) for display. */
export function fmtMoney(v) {
  if (v === null || v === undefined || v === '') return '—';
  const n = Number(v);
  return Number.isFinite(n) ? `¥${n.toFixed(2)}` : String(v);
}

export function fmtInt(v) {
  if (v === null || v === undefined) return '—';
  const n = Number(v);
  return Number.isFinite(n) ? n.toLocaleString('zh-CN') : String(v);
}

/**
 * `floor(amount × 10)` from the typed text, in integers (the server's
 * estimate): "12.34" → 123. null when the text is not a valid amount.
 */
export function estimatePoints(text) {
  const m = /^([0-9]{1,4})(?:\.([0-9]{1,2}))?$/.exec(String(text).trim());
  if (!m) return null;
  const cents = Number(m[1]) * 100 + Number((m[2] || '').padEnd(2, '0'));
  if (cents < 1 || cents > 999999) return null;
  return Math.floor(cents / 10);
}

/** A pager under a list: 上一页 / 第 n / m 页 / 下一页. */
export function pager(pagination, onPage, testid = 'pager') {
  const p = pagination || { page: 1, total_pages: 0, total: 0 };
  const pages = Math.max(p.total_pages || 0, 1);
  return h('nav', { class: 'pager', 'aria-label': '分页', 'data-testid': testid, 'data-page': p.page, 'data-total-pages': p.total_pages, hidden: pages <= 1 && (p.page || 1) <= 1 },
    h('button', { type: 'button', class: 'btn btn-ghost btn-sm', disabled: p.page <= 1, 'data-testid': `${testid}-prev`, onclick: () => onPage(p.page - 1) }, '上一页'),
    h('span', { class: 'pager-info' }, `第 ${p.page} / ${pages} 页 · 共 ${p.total ?? 0} 条`),
    h('button', { type: 'button', class: 'btn btn-ghost btn-sm', disabled: p.page >= pages, 'data-testid': `${testid}-next`, onclick: () => onPage(p.page + 1) }, '下一页'),
  );
}

/** Briefly highlights an element whose value changed live. */
export function flash(el) {
  if (!el) return;
  el.classList.remove('flash');
  void el.offsetWidth; // restart the animation
  el.classList.add('flash');
}

/**
 * Hash-routed tabs: buttons with `data-tab` switch panels with
 * `data-panel`; `#name` in the URL opens a tab directly.
 */
export function tabs({ nav, panels, initial, onShow }) {
  const names = panels.map((p) => p.dataset.panel);
  function show(name, push = true) {
    if (!names.includes(name)) name = initial;
    for (const p of panels) p.hidden = p.dataset.panel !== name;
    for (const b of nav.querySelectorAll('[data-tab]')) {
      const on = b.dataset.tab === name;
      b.classList.toggle('active', on);
      if (on) b.setAttribute('aria-current', 'page');
      else b.removeAttribute('aria-current');
    }
    if (push && location.hash !== `#${name}`) history.replaceState(null, '', `#${name}`);
    onShow?.(name);
    return name;
  }
  nav.addEventListener('click', (e) => {
    const b = e.target.closest('[data-tab]');
    if (b) show(b.dataset.tab);
  });
  window.addEventListener('hashchange', () => show(location.hash.slice(1), false));
  return { show, current: () => panels.find((p) => !p.hidden)?.dataset.panel };
}

/** Opens a <dialog> (modal), resolving when it closes. */
export function openDialog(dialog) {
  if (!dialog.open) dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener('close', () => resolve(dialog.returnValue), { once: true }));
}

/** A visual status for review/order states. */
export const STATUS_TEXT = {
  pending: '待审核',
  approved: '已通过',
  rejected: '已驳回',
  redeemed: '已核销',
  active: '上架中',
  inactive: '已下架',
};
export function badge(status, text) {
  return h('span', { class: `badge badge-${status}`, 'data-status': status }, text || STATUS_TEXT[status] || status);
}
