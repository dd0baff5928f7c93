// Audit log: every merchant action, newest first, paginated.
import { h, fill, showMsg, fmtTime, pager } from '../shared/ui.js';

/** Known action names → Chinese; anything else is shown as the server names it. */
const ACTIONS = {
  'product.create': '新建商品', 'product.update': '编辑商品', 'product.stock': '调整库存', 'stock.change': '调整库存',
  'stock.restock': '补货', 'stock.admin_adjust': '盘点调整',
  'review.approve': '审核通过', 'review.reject': '审核驳回',
  'points.adjust': '调整积分', 'exchange.redeem': '核销兑换码', 'order.redeem': '核销兑换码',
  'lottery.settings': '修改转盘设置', 'lottery.prizes': '修改奖品与概率',
  'auth.logout_all': '退出所有设备',
};
const PAGE_SIZE = 20;

function parse(v) {
  if (typeof v !== 'string') return v;
  try { return JSON.parse(v); } catch { return v; }
}
const show = (v) => (v === null || v === undefined ? '—' : typeof v === 'object' ? JSON.stringify(v) : String(v));

/** before/after → "field: old → new" lines for objects, else the two values. */
function changes(before, after) {
  const b = parse(before);
  const a = parse(after);
  if (b && a && typeof b === 'object' && typeof a === 'object' && !Array.isArray(b) && !Array.isArray(a)) {
    const keys = [...new Set([...Object.keys(b), ...Object.keys(a)])].filter((k) => JSON.stringify(b[k]) !== JSON.stringify(a[k]));
    if (keys.length && keys.length <= 6) {
      return h('ul', { class: 'diff' }, keys.map((k) => h('li', {}, h('span', { class: 'mono' }, k), `：${show(b[k])} → ${show(a[k])}`)));
    }
  }
  if (b === null || b === undefined) return h('span', { class: 'mono small' }, show(a));
  return h('span', { class: 'mono small' }, `${show(b)} → ${show(a)}`);
}

export function auditSection(panel, ctx) {
  const { api } = ctx;
  let page = 1;
  const err = h('div', { class: 'msg', 'data-testid': 'audit-error', hidden: true });
  const tbody = h('tbody', { 'data-testid': 'audit-list' });
  const pagerBox = h('div');
  const reload = h('button', { type: 'button', class: 'btn btn-ghost btn-sm', 'data-testid': 'audit-reload', onclick: () => load() }, '刷新');
  panel.append(h('div', { class: 'card' },
    h('div', { class: 'card-head' },
      h('div', {}, h('h2', {}, '操作日志'), h('div', { class: 'card-sub' }, '所有商家操作，最新的在前')), reload),
    err,
    h('div', { class: 'table-wrap' },
      h('table', { class: 'table stackable audit-table' },
        h('thead', {}, h('tr', {}, h('th', {}, '时间'), h('th', {}, '操作人'), h('th', {}, '操作'), h('th', {}, '对象'), h('th', {}, '变更'), h('th', {}, '原因'))),
        tbody)),
    pagerBox));

  async function load() {
    try {
      const d = await api.get('/api/merchant/audit-log', { page, page_size: PAGE_SIZE });
      showMsg(err, null);
      const entries = d.entries || [];
      fill(tbody, entries.length ? entries.map((e) => h('tr', { 'data-testid': 'audit-row', 'data-id': e.id, 'data-action': e.action },
        h('td', { 'data-label': '时间', class: 'nowrap' }, fmtTime(e.created_at, true)),
        h('td', { 'data-label': '操作人' }, `商家 ${e.actor_id}`),
        h('td', { class: 'cell-main' }, h('strong', {}, ACTIONS[e.action] || e.action), ACTIONS[e.action] ? h('span', { class: 'tiny mono' }, ` ${e.action}`) : null),
        h('td', { 'data-label': '对象', class: 'mono small' }, e.target === 'wheel' ? '转盘' : show(parse(e.target))),
        h('td', { 'data-label': '变更', class: 'cell-full' }, changes(e.before, e.after)),
        h('td', { 'data-label': '原因' }, e.reason || '—')))
        : h('tr', {}, h('td', { colspan: 6, class: 'empty' }, '暂无操作记录')));
      fill(pagerBox, pager(d.pagination, (p) => { page = p; load(); }, 'audit-pager'));
    } catch (e) {
      showMsg(err, e);
      fill(tbody);
      fill(pagerBox);
    }
  }

  return {
    visible(on) { if (on) load(); },
  };
}
