// Statistics: today's and overall counts, live connections, and hourly
// charts (draws, exchanges, points awarded, uploads, live connections) as
// inline SVG.
import { h, fill, showMsg, fmtInt } from '../shared/ui.js';
import { chart } from './chart.js';

const COUNTS = [
  ['uploads', '上传小票'], ['pending', '待审核'], ['approved', '审核通过'], ['rejected', '审核驳回'],
  ['points_awarded', '发放积分'], ['draws', '抽奖次数'], ['exchanges', '兑换订单'], ['new_users', '新用户'],
];
const SERIES = [
  ['draws', '每小时抽奖次数', '#c2410c', '次'],
  ['exchanges', '每小时兑换订单', '#0e7490', '单'],
  ['points_awarded', '每小时发放积分（小票审核）', '#15803d', '积分'],
  ['uploads', '每小时上传小票', '#7c3aed', '张'],
];
const REFRESH_MS = 30_000;

const pad = (n) => String(n).padStart(2, '0');
function hourLabel(v) {
  if (typeof v === 'number') return `${pad(v % 24)}时`;
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? String(v) : `${pad(d.getHours())}时`;
}
function timeLabel(v) {
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? String(v) : `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function statsSection(panel, ctx) {
  const { api } = ctx;
  let timer = null;
  let hours = 24;

  const err = h('div', { class: 'msg', 'data-testid': 'stats-error', hidden: true });
  const live = h('div', { class: 'grid grid-2' });
  const today = h('div', { class: 'grid grid-4', 'data-testid': 'stats-today' });
  const updated = h('span', { class: 'tiny', 'data-testid': 'stats-updated' });
  const hErr = h('div', { class: 'msg', 'data-testid': 'hourly-error', hidden: true });
  const charts = h('div', { class: 'grid grid-2', 'data-testid': 'hourly-charts' });
  const hoursSel = h('select', { id: 'stats-hours', class: 'input input-sm input-auto', 'data-testid': 'hourly-hours' },
    [24, 48, 72].map((n) => h('option', { value: n, selected: n === hours }, `最近 ${n} 小时`)));
  hoursSel.addEventListener('change', () => { hours = Number(hoursSel.value); loadHourly(); });
  const reload = h('button', { type: 'button', class: 'btn btn-ghost btn-sm', 'data-testid': 'stats-reload', onclick: () => load() }, '刷新');

  panel.append(
    h('div', { class: 'row-between section-head' }, h('h2', {}, '数据统计'), h('div', { class: 'row' }, updated, reload)),
    err,
    live,
    h('h3', { class: 'section-sub' }, '今日（北京时间 0 点起）'),
    today,
    h('div', { class: 'row-between section-head' }, h('h3', { class: 'section-sub' }, '按小时'),
      h('div', { class: 'row' }, h('label', { for: 'stats-hours', class: 'sr-only' }, '时间范围'), hoursSel)),
    hErr,
    charts);

  function stat(label, value, foot, testid) {
    return h('div', { class: 'stat', 'data-testid': testid, 'data-value': value },
      h('div', { class: 'stat-label' }, label),
      h('div', { class: 'stat-value' }, fmtInt(value)),
      foot ? h('div', { class: 'stat-foot' }, foot) : null);
  }

  async function loadCounts() {
    try {
      const d = await api.get('/api/merchant/statistics');
      showMsg(err, null);
      fill(live,
        stat('实时连接数', d.live_connections, '本实例当前的 WebSocket 连接', 'stat-live-connections'),
        stat('在线用户', d.live_users, '本实例当前在线的用户', 'stat-live-users'));
      fill(today, COUNTS.map(([k, label]) => {
        const s = stat(label, d.today?.[k] ?? 0, `累计 ${fmtInt(d.overall?.[k] ?? 0)}`, `stat-today-${k}`);
        s.dataset.overall = String(d.overall?.[k] ?? 0);
        return s;
      }));
      const now = new Date();
      updated.textContent = `更新于 ${pad(now.getHours())}:${pad(now.getMinutes())}:${pad(now.getSeconds())}`;
    } catch (e) {
      showMsg(err, e);
    }
  }

  async function loadHourly() {
    try {
      const d = await api.get('/api/merchant/statistics/hourly', { hours });
      showMsg(hErr, null);
      const rows = d.hours || [];
      const every = Math.max(1, Math.ceil(rows.length / 8));
      const cards = SERIES.map(([key, title, color, unit]) => {
        const pts = rows.map((r) => ({ label: hourLabel(r.hour), value: Number(r[key]) || 0, title: `${hourLabel(r.hour)}：${fmtInt(r[key] ?? 0)} ${unit}` }));
        const total = pts.reduce((s, p) => s + p.value, 0);
        return h('div', { class: 'card chart-card', 'data-testid': `chart-${key}`, 'data-total': total, 'data-points': pts.length },
          h('div', { class: 'card-head' }, h('h3', {}, title), h('span', { class: 'card-sub num' }, `合计 ${fmtInt(total)} ${unit}`)),
          chart({ kind: 'bar', points: pts, title, color, labelEvery: every }));
      });
      const conns = (d.connections || []).map((c) => ({ label: timeLabel(c.at), value: Number(c.count) || 0, title: `${timeLabel(c.at)}：${c.count} 个连接` }));
      const peak = conns.reduce((m, p) => Math.max(m, p.value), 0);
      cards.push(h('div', { class: 'card chart-card span-2', 'data-testid': 'chart-connections', 'data-points': conns.length, 'data-peak': peak },
        h('div', { class: 'card-head' }, h('h3', {}, '实时连接数'), h('span', { class: 'card-sub num' }, `峰值 ${fmtInt(peak)}`)),
        chart({ kind: 'line', points: conns, title: '实时连接数', color: '#b45309', width: 1120, height: 200 })));
      fill(charts, cards);
    } catch (e) {
      showMsg(hErr, e);
      fill(charts);
    }
  }

  function load() { loadCounts(); loadHourly(); }

  return {
    visible(on) {
      clearInterval(timer);
      if (on) {
        load();
        timer = setInterval(() => { if (document.visibilityState === 'visible') load(); }, REFRESH_MS);
      }
    },
    destroy() { clearInterval(timer); },
  };
}
