// Audit log: every merchant action, newest first, paginated.
import { h, fill, showMsg, fmtTime, pager, STATUS_TEXT } from '../shared/ui.js';

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
const isObject = (v) => !!v && typeof v === 'object' && !Array.isArray(v);

/** Field names in the before/after objects → Chinese (the key stays in the tooltip). */
const FIELDS = {
  status: '状态', points_awarded: '发放积分', estimated_points: '预计积分', total_points: '积分余额',
  stock: '库存', operation: '方式', name: '名称', category: '分类', exchange_points: '所需积分',
  description: '描述', image: '图片', sort_order: '排序', cost_points: '每次消耗积分',
  pity_threshold: '保底阈值', daily_limit: '每日次数上限', version: '配置版本',
  prize_name: '名称', prize_type: '类型', prize_value: '价值', angle: '角度', color: '颜色',
  probability: '概率', is_activity: '活动', is_valuable: '贵重',
};
const OPERATIONS = { restock: '补货', admin_adjust: '盘点调整', purchase: '顾客兑换', create: '新建商品' };
const PRIZE_TYPES = { points: '积分', coupon: '优惠券', physical: '实物', empty: '未中奖' };
const ORDER_STATUS = { pending: '待核销', redeemed: '已核销' };

/** A value as the merchant reads it; `action` decides what a status means. */
function valueText(action, key, v) {
  if (v === null || v === undefined) return key === 'stock' && action === 'lottery.prizes' ? '不限' : '—';
  if (typeof v === 'boolean') return v ? '是' : '否';
  if (key === 'status') return (action.startsWith('order.') ? ORDER_STATUS[v] : STATUS_TEXT[v]) || String(v);
  if (key === 'operation') return OPERATIONS[v] || String(v);
  if (key === 'prize_type') return PRIZE_TYPES[v] || String(v);
  if (key === 'probability' && typeof v === 'number') return `${(v * 100).toFixed(2)}%`;
  if (key === 'angle') return `${v}°`;
  return show(v);
}

/** One object against another: changed fields "a → b", new ones "b", old-only ones as context. */
function fieldChanges(action, b, a, skip = []) {
  const keys = [...new Set([...Object.keys(b || {}), ...Object.keys(a || {})])].filter((k) => !skip.includes(k));
  const out = [];
  for (const k of keys) {
    const inB = b && k in b;
    const inA = a && k in a;
    if (inB && inA && JSON.stringify(b[k]) === JSON.stringify(a[k])) continue;
    const text = inB && inA ? `${valueText(action, k, b[k])} → ${valueText(action, k, a[k])}` : valueText(action, k, inA ? a[k] : b[k]);
    out.push(h('li', { title: k }, h('span', { class: 'diff-key' }, FIELDS[k] || k), `：${text}`));
  }
  return out;
}

/** Lists of objects (the wheel's prizes): matched by id, one line per prize that changed. */
function listChanges(action, b, a) {
  const id = (x) => (x.prize_id ?? x.angle ?? JSON.stringify(x));
  const before = new Map(b.map((x) => [id(x), x]));
  const after = new Map(a.map((x) => [id(x), x]));
  const out = [];
  const name = (x) => `${x.angle !== undefined ? `${x.angle}° ` : ''}${x.prize_name ?? x.name ?? ''}`;
  for (const [k, x] of after) {
    const old = before.get(k);
    if (!old) { out.push(h('li', {}, `新增 ${name(x)}`)); continue; }
    const fields = fieldChanges(action, old, x, ['prize_id']);
    if (fields.length) out.push(h('li', {}, h('span', { class: 'diff-key' }, name(old)), h('ul', { class: 'diff' }, fields)));
  }
  for (const [k, x] of before) if (!after.has(k)) out.push(h('li', {}, `移除 ${name(x)}`));
  return out.length ? out : [h('li', {}, '无变化')];
}

/** before/after → readable changes. */
function changes(action, before, after) {
  const b = parse(before);
  const a = parse(after);
  const none = (v) => v === null || v === undefined;
  if ((isObject(a) && (isObject(b) || none(b))) || (isObject(b) && none(a))) {
    const items = fieldChanges(action, isObject(b) ? b : {}, isObject(a) ? a : {});
    if (items.length) return h('ul', { class: 'diff' }, items);
  }
  if (Array.isArray(b) && Array.isArray(a) && [...b, ...a].every(isObject)) return h('ul', { class: 'diff' }, listChanges(action, b, a));
  if (b === null || b === undefined) return h('span', { class: 'mono small' }, show(a));
  return h('span', { class: 'mono small' }, `${show(b)} → ${show(a)}`);
}

/** `upload:<id>` → 小票 and the id (small, for search). */
const TARGETS = { upload: '小票', order: '订单', product: '商品', user: '用户' };
function target(t) {
  const v = parse(t);
  if (v === 'wheel') return '转盘';
  const m = typeof v === 'string' ? /^([a-z_]+):(.+)$/.exec(v) : null;
  if (!m || !TARGETS[m[1]]) return h('span', { class: 'mono small' }, show(v));
  return h('span', { title: v }, TARGETS[m[1]], ' ', h('span', { class: 'mono tiny target-id' }, m[2]));
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
        h('td', { 'data-label': '对象' }, target(e.target)),
        h('td', { 'data-label': '变更', class: 'cell-full' }, changes(e.action, e.before, e.after)),
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
