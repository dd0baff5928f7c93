// The counter: a guest shows an 8-character exchange code; the merchant
// redeems it once. The API has no read-only lookup of a code, so what the
// code is for is shown from the redemption's answer (see web/README.md,
// "API gaps").
import { h, fill, showMsg, fmtTime } from '../shared/ui.js';

export function counterSection(panel, ctx) {
  const { api } = ctx;
  const code = h('input', {
    id: 'redeem-code', class: 'input code-input mono', type: 'text', maxlength: 8, autocomplete: 'off', autocapitalize: 'characters',
    spellcheck: 'false', placeholder: '8 位兑换码', 'data-testid': 'redeem-code', 'aria-describedby': 'redeem-help',
  });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-lg', 'data-testid': 'redeem-submit' }, '核销');
  const err = h('div', { class: 'msg', 'data-testid': 'redeem-error', hidden: true });
  const errExtra = h('div', { class: 'tiny', 'data-testid': 'redeem-error-detail', hidden: true });
  const result = h('div', { class: 'redeem-result', 'data-testid': 'redeem-result', 'aria-live': 'polite', hidden: true });
  const recent = h('ul', { class: 'mini-list', 'data-testid': 'redeem-recent' });
  const form = h('form', { class: 'stack', novalidate: true, 'data-testid': 'redeem-form' },
    h('div', { class: 'field' }, h('label', { for: 'redeem-code' }, '兑换码'),
      h('div', { class: 'field-row' }, code, submit),
      h('div', { id: 'redeem-help', class: 'help' }, '顾客在「我的记录 → 订单」里出示兑换码；不区分大小写，每个码只能核销一次。')),
    err, errExtra, result);

  panel.append(h('div', { class: 'grid grid-2' },
    h('div', { class: 'card' }, h('div', { class: 'card-head' }, h('h2', {}, '到店核销')), form),
    h('div', { class: 'card' }, h('div', { class: 'card-head' }, h('h2', {}, '本次登录已核销')), recent,
      h('div', { class: 'tiny', 'data-testid': 'redeem-recent-empty' }, '暂无'))));

  code.addEventListener('input', () => {
    const v = code.value.toUpperCase().replace(/\s+/g, '');
    if (v !== code.value) code.value = v;
  });

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    showMsg(err, null);
    errExtra.hidden = true;
    result.hidden = true;
    const value = code.value.trim();
    submit.disabled = true;
    try {
      const d = await api.post('/api/merchant/exchange/redeem', { exchange_code: value });
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
      panel.querySelector('[data-testid="redeem-recent-empty"]').hidden = true;
      code.value = '';
      code.focus();
    } catch (e2) {
      showMsg(err, e2); // 4007 / 4008 exactly as the server says them
      if (e2.code === 4008 && e2.data?.redeemed_at) {
        errExtra.textContent = `该兑换码已于 ${fmtTime(e2.data.redeemed_at, true)} 核销`;
        errExtra.hidden = false;
      }
      code.select();
    } finally {
      submit.disabled = false;
    }
  });

  return {
    visible(on) { if (on) setTimeout(() => code.focus(), 0); },
  };
}
