// The counter: a guest shows an 8-character exchange code; the merchant
// looks it up (`GET /api/merchant/exchange/orders/{code}`: what it is for,
// whose it is, whether it is still pending) and then redeems it once with a
// confirm button (`POST /api/merchant/exchange/redeem`).
import { h, fill, showMsg, fmtTime, fmtInt, badge } from '../shared/ui.js';

const ORDER_STATUS = { pending: '待核销', redeemed: '已核销' };

export function counterSection(panel, ctx) {
  const { api } = ctx;
  const code = h('input', {
    id: 'redeem-code', class: 'input code-input mono', type: 'text', maxlength: 8, autocomplete: 'off', autocapitalize: 'characters',
    spellcheck: 'false', placeholder: '8 位兑换码', 'data-testid': 'redeem-code', 'aria-describedby': 'redeem-help',
  });
  const lookup = h('button', { type: 'submit', class: 'btn btn-primary btn-lg', 'data-testid': 'redeem-lookup' }, '查询');
  const err = h('div', { class: 'msg', 'data-testid': 'redeem-error', hidden: true });
  const errExtra = h('div', { class: 'tiny', 'data-testid': 'redeem-error-detail', hidden: true });
  const order = h('div', { class: 'order-card', 'data-testid': 'redeem-order', 'aria-live': 'polite', hidden: true });
  const result = h('div', { class: 'redeem-result', 'data-testid': 'redeem-result', 'aria-live': 'polite', hidden: true });
  const recent = h('ul', { class: 'mini-list', 'data-testid': 'redeem-recent' });
  const recentEmpty = h('div', { class: 'tiny', 'data-testid': 'redeem-recent-empty' }, '暂无');
  const form = h('form', { class: 'stack', novalidate: true, 'data-testid': 'redeem-form' },
    h('div', { class: 'field' }, h('label', { for: 'redeem-code' }, '兑换码'),
      h('div', { class: 'field-row' }, code, lookup),
      h('div', { id: 'redeem-help', class: 'help' }, '顾客在「我的记录 → 订单」里出示兑换码；不区分大小写。先查询核对商品，再确认核销，每个码只能核销一次。')),
    err, errExtra, order, result);

  panel.append(h('div', { class: 'grid grid-2' },
    h('div', { class: 'card' }, h('div', { class: 'card-head' }, h('h2', {}, '到店核销')), form),
    h('div', { class: 'card' }, h('div', { class: 'card-head' }, h('h2', {}, '本次登录已核销')), recent, recentEmpty)));

  /** The order on screen (looked up, not yet redeemed here), or null. */
  let shown = null;
  let busy = false;

  /** Hides a card and forgets what it showed (its data-* attributes too). */
  function hideCard(card) {
    card.hidden = true;
    delete card.dataset.exchangeId;
    delete card.dataset.exchangeCode;
    delete card.dataset.status;
  }

  function clearMessages() {
    showMsg(err, null);
    errExtra.hidden = true;
    errExtra.textContent = '';
  }

  function showError(e) {
    showMsg(err, e); // 4007 / 4008 exactly as the server says them
    if (e.code === 4008 && e.data?.redeemed_at) {
      errExtra.textContent = `该兑换码已于 ${fmtTime(e.data.redeemed_at, true)} 核销`;
      errExtra.hidden = false;
    }
  }

  code.addEventListener('input', () => {
    const v = code.value.toUpperCase().replace(/\s+/g, '');
    if (v !== code.value) code.value = v;
    // What is on screen no longer belongs to what is typed.
    if (shown && shown.exchange_code !== v) { shown = null; hideCard(order); }
  });

  function renderOrder(o) {
    const pending = o.status === 'pending';
    order.dataset.exchangeId = o.exchange_id;
    order.dataset.exchangeCode = o.exchange_code;
    order.dataset.status = o.status;
    const confirm = h('button', { type: 'button', class: 'btn btn-ok btn-lg', 'data-testid': 'redeem-confirm' }, '确认核销');
    const cancel = h('button', { type: 'button', class: 'btn btn-ghost', 'data-testid': 'redeem-cancel' }, '取消');
    confirm.addEventListener('click', () => redeem(o, confirm));
    cancel.addEventListener('click', () => { shown = null; hideCard(order); code.select(); });
    fill(order,
      h('div', { class: 'row-between' },
        h('span', { class: 'mono order-code' }, o.exchange_code),
        h('span', { 'data-testid': 'redeem-order-status', 'data-status': o.status }, badge(o.status === 'pending' ? 'pending' : 'redeemed', ORDER_STATUS[o.status] || o.status))),
      h('div', { class: 'redeem-product', 'data-testid': 'redeem-order-product' }, `${o.product_name} × ${o.quantity}`),
      h('dl', { class: 'kv' },
        h('dt', {}, '顾客'), h('dd', { 'data-testid': 'redeem-order-user' }, o.user_mobile ? `${o.user_mobile}（用户 ${o.user_id}）` : `用户 ${o.user_id}`),
        h('dt', {}, '消耗积分'), h('dd', { class: 'num' }, fmtInt(o.total_cost)),
        h('dt', {}, '兑换时间'), h('dd', {}, fmtTime(o.created_at, true)),
        o.redeemed_at ? [h('dt', {}, '核销时间'), h('dd', {}, fmtTime(o.redeemed_at, true))] : null),
      pending
        ? h('div', { class: 'row order-actions' }, confirm, cancel)
        : h('div', { class: 'small muted' }, '此兑换码已核销，不能再次核销。'));
    order.hidden = false;
    if (pending) confirm.focus();
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (busy) return;
    clearMessages();
    hideCard(result);
    hideCard(order);
    shown = null;
    const value = code.value.trim();
    if (!value) { showMsg(err, '请输入兑换码', 'info'); code.focus(); return; }
    busy = true;
    lookup.disabled = true;
    try {
      shown = await api.get(`/api/merchant/exchange/orders/${encodeURIComponent(value)}`);
      renderOrder(shown);
    } catch (e2) {
      showError(e2);
      code.select();
    } finally {
      busy = false;
      lookup.disabled = false;
    }
  });

  async function redeem(o, btn) {
    if (busy) return;
    busy = true;
    btn.disabled = true;
    clearMessages();
    try {
      const d = await api.post('/api/merchant/exchange/redeem', { exchange_code: o.exchange_code });
      shown = null;
      hideCard(order);
      result.dataset.exchangeId = d.exchange_id;
      result.dataset.status = d.status;
      fill(result,
        h('div', { class: 'result-title' }, '核销成功'),
        h('div', { class: 'redeem-product', 'data-testid': 'redeem-product' }, `${d.product_name} × ${d.quantity}`),
        h('dl', { class: 'kv' },
          h('dt', {}, '兑换码'), h('dd', { class: 'mono' }, d.exchange_code),
          h('dt', {}, '顾客'), h('dd', {}, `用户 ${d.user_id}`),
          h('dt', {}, '核销时间'), h('dd', {}, fmtTime(d.redeemed_at, true))));
      result.hidden = false;
      recent.prepend(h('li', {}, h('span', { class: 'mono' }, d.exchange_code), h('span', {}, `${d.product_name} × ${d.quantity}`), h('span', { class: 'tiny' }, fmtTime(d.redeemed_at))));
      recentEmpty.hidden = true;
      code.value = '';
      code.focus();
    } catch (e) {
      showError(e);
      // Redeemed elsewhere meanwhile (4008): show the order as it is now.
      if (e.code === 4008) {
        renderOrder({ ...o, status: 'redeemed', redeemed_at: e.data?.redeemed_at ?? null });
      } else {
        btn.disabled = false;
      }
    } finally {
      busy = false;
    }
  }

  return {
    visible(on) { if (on) setTimeout(() => code.focus(), 0); },
  };
}
