// Pieces both pages share: the header, the phone + code login card and the
// connection banner.
import { h, showMsg, BRAND } from './ui.js';

/** The page header: brand, a live dot, the signed-in user and actions. */
export function header({ subtitle, right = [] }) {
  return h('header', { class: 'app-header', 'data-testid': 'app-header' },
    h('div', { class: 'brand' },
      h('div', { class: 'brand-mark', 'aria-hidden': 'true' }, BRAND.short.slice(0, 1)),
      h('div', {},
        h('div', { class: 'brand-name', 'data-testid': 'brand-name' }, BRAND.name),
        h('div', { class: 'brand-sub' }, subtitle))),
    h('div', { class: 'header-spacer' }),
    right);
}

/**
 * The login card. `onSuccess(data)` runs after `POST /api/auth/login`
 * succeeds; if it throws or returns an error text, the text is shown.
 */
export function loginCard({ api, title, lead, onSuccess }) {
  const phone = h('input', {
    id: 'login-phone', class: 'input', type: 'tel', inputmode: 'numeric', autocomplete: 'tel', maxlength: 11,
    placeholder: '11 位手机号', 'data-testid': 'login-phone', required: true,
  });
  const code = h('input', {
    id: 'login-code', class: 'input', type: 'text', inputmode: 'numeric', autocomplete: 'one-time-code', maxlength: 6,
    placeholder: '开发环境验证码 123456', 'data-testid': 'login-code', required: true,
  });
  const sendBtn = h('button', { type: 'button', class: 'btn btn-ghost', 'data-testid': 'send-code' }, '获取验证码');
  const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-lg btn-block', 'data-testid': 'login-submit' }, '登录');
  const msg = h('div', { class: 'msg', 'data-testid': 'login-error', hidden: true });

  let countdown = null;
  function startCountdown(seconds) {
    clearInterval(countdown);
    let left = Math.max(1, Number(seconds) || 60);
    sendBtn.disabled = true;
    sendBtn.textContent = `${left} 秒后重发`;
    countdown = setInterval(() => {
      left -= 1;
      if (left <= 0) {
        clearInterval(countdown);
        sendBtn.disabled = false;
        sendBtn.textContent = '重新获取';
      } else sendBtn.textContent = `${left} 秒后重发`;
    }, 1000);
  }

  sendBtn.addEventListener('click', async () => {
    showMsg(msg, null);
    sendBtn.disabled = true;
    try {
      const d = await api.sendCode(phone.value.trim());
      showMsg(msg, `验证码已发送，${Math.round((d?.expires_in ?? 300) / 60)} 分钟内有效`, 'ok');
      startCountdown(d?.resend_after ?? 60);
      code.focus();
    } catch (err) {
      sendBtn.disabled = false;
      showMsg(msg, err);
    }
  });

  const form = h('form', { class: 'form-grid', 'data-testid': 'login-form', novalidate: true },
    h('div', { class: 'field' }, h('label', { for: 'login-phone' }, '手机号'), phone),
    h('div', { class: 'field' }, h('label', { for: 'login-code' }, '验证码'),
      h('div', { class: 'field-row' }, code, sendBtn)),
    msg,
    submit);

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    showMsg(msg, null);
    submit.disabled = true;
    submit.textContent = '登录中…';
    try {
      const data = await api.login(phone.value.trim(), code.value.trim());
      const refusal = await onSuccess(data);
      if (refusal) showMsg(msg, refusal);
    } catch (err) {
      showMsg(msg, err);
    } finally {
      submit.disabled = false;
      submit.textContent = '登录';
    }
  });

  const card = h('section', { class: 'card login-card', 'aria-labelledby': 'login-title', 'data-testid': 'login-card' },
    h('h1', { id: 'login-title' }, title),
    h('p', { class: 'muted small' }, lead),
    form);
  return { el: h('div', { class: 'login-wrap' }, card), msg, focus: () => phone.focus() };
}

const STATE_TEXT = {
  connecting: '正在连接实时服务…',
  open: '实时连接正常',
  reconnecting: '连接已断开，正在重连…',
  closed: '实时连接已关闭',
};

/** The banner `data-testid="conn-status"`; `set(state, info)` updates it. */
export function connBanner() {
  const text = h('span', { 'data-testid': 'conn-text' }, STATE_TEXT.connecting);
  const el = h('div', {
    class: 'conn-banner', role: 'status', 'aria-live': 'polite',
    'data-testid': 'conn-status', 'data-state': 'connecting',
  }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), text);
  const dots = new Set();
  return {
    el,
    /** A small dot in the header mirroring the state. */
    dot() {
      const d = h('span', { class: 'live-dot', 'data-state': el.dataset.state, title: STATE_TEXT[el.dataset.state], 'aria-hidden': 'true' });
      dots.add(d);
      return d;
    },
    set(state, info = {}) {
      el.dataset.state = state;
      let t = STATE_TEXT[state] || state;
      if (state === 'closed' && info.msg) t = info.msg;
      text.textContent = t;
      for (const d of dots) { d.dataset.state = state; d.title = t; }
    },
  };
}
