// The merchant console: login (merchants only), the live socket, and the
// sections (reviews, products, counter, wheel, statistics, audit log).
import { Api } from '../shared/api.js';
import { RealtimeSocket } from '../shared/socket.js';
import { h, fill, showMsg, toast, tabs } from '../shared/ui.js';
import { header, loginCard, connBanner } from '../shared/shell.js';
import { reviewsSection } from './reviews.js';
import { productsSection } from './products.js';
import { counterSection } from './counter.js';
import { wheelSection } from './wheel-editor.js';
import { statsSection } from './stats.js';
import { auditSection } from './audit.js';

const api = new Api('rp.console.session');
const root = document.getElementById('app');
let view = null;

api.on((kind, detail) => {
  if (kind === 'logout' && view) {
    view.destroy();
    view = null;
    showLogin(detail);
  } else if (kind === 'refresh') {
    view?.socket.refreshToken(detail);
  }
});

/** Text shown when a non-merchant logs in and the server gave no refusal to show. */
const NOT_MERCHANT = '该账号不是商家账号，无法进入商家后台';

function showLogin(reason) {
  const card = loginCard({
    api,
    title: '商家后台登录',
    lead: '使用商家手机号和验证码登录。仅商家账号可进入。',
    onSuccess: async (data) => {
      if (data.user_info?.is_merchant) { showMain(); return null; }
      // Not a merchant: show the server's own refusal (2003) when it gives
      // one, then end the session we just opened.
      let refusal = { code: 2003, msg: NOT_MERCHANT };
      try {
        await api.get('/api/merchant/statistics');
      } catch (err) {
        if (err.code === 2003) refusal = err;
      }
      await api.logout().catch(() => {});
      return refusal;
    },
  });
  fill(root, header({ subtitle: '商家后台' }), card.el);
  if (reason?.msg) showMsg(card.msg, reason);
  card.focus();
}

function showMain() {
  view?.destroy();
  view = mainView();
}

const SECTIONS = [
  ['reviews', '小票审核'],
  ['products', '商品库存'],
  ['counter', '到店核销'],
  ['wheel', '转盘设置'],
  ['stats', '数据统计'],
  ['audit', '操作日志'],
];

function mainView() {
  const user = api.user || {};
  const conn = connBanner();
  const lastSeqEl = h('span', { class: 'num', 'data-testid': 'last-seq' }, '—');
  const logoutBtn = h('button', { type: 'button', class: 'btn btn-ghost btn-sm', 'data-testid': 'logout' }, '退出');
  const logoutAllBtn = h('button', { type: 'button', class: 'btn btn-ghost btn-sm', 'data-testid': 'logout-all', title: '退出此账号在所有设备上的登录' }, '退出所有设备');
  logoutBtn.addEventListener('click', () => api.logout(false).catch((e) => toast(e.msg, 'error')));
  logoutAllBtn.addEventListener('click', () => {
    if (window.confirm('确定退出此账号在所有设备上的登录吗？')) api.logout(true).catch((e) => toast(e.msg, 'error'));
  });

  const head = header({
    subtitle: '商家后台',
    right: h('div', { class: 'header-user' },
      conn.dot(),
      h('span', { class: 'who hide-sm', 'data-testid': 'merchant-name' }, `${user.nickname || '商家'} ${user.mobile || ''}`),
      logoutBtn, logoutAllBtn),
  });

  const counts = {};
  const nav = h('nav', { class: 'tabbar', 'aria-label': '后台功能' },
    SECTIONS.map(([name, label]) => {
      const b = h('button', { type: 'button', class: 'tab', 'data-tab': name, 'data-testid': `nav-${name}` }, label);
      if (name === 'reviews') {
        counts.pending = h('span', { class: 'count-pill', 'data-testid': 'pending-count', 'data-count': 0, 'aria-label': '待审核数量' }, '0');
        b.append(counts.pending);
      }
      return b;
    }));
  const panels = SECTIONS.map(([name, label]) => h('section', { 'data-panel': name, 'aria-label': label, hidden: true }));
  const panel = Object.fromEntries(panels.map((p) => [p.dataset.panel, p]));
  const main = h('main', { class: 'container console' }, panels);
  const foot = h('footer', { class: 'app-foot' }, '实时同步序号 ', lastSeqEl);
  fill(root, h('div', { class: 'topbar' }, head, conn.el, nav), main, foot);

  const ctx = {
    api,
    socket: null,
    setPending(n) {
      counts.pending.textContent = String(n);
      counts.pending.dataset.count = String(n);
    },
  };

  const sections = {
    reviews: reviewsSection(panel.reviews, ctx),
    products: productsSection(panel.products, ctx),
    counter: counterSection(panel.counter, ctx),
    wheel: wheelSection(panel.wheel, ctx),
    stats: statsSection(panel.stats, ctx),
    audit: auditSection(panel.audit, ctx),
  };

  const socket = new RealtimeSocket({
    api,
    onState: (state, info) => conn.set(state, info),
    onSeq: (seq) => { lastSeqEl.textContent = String(seq); },
    onWelcome: (_w, resumed) => {
      if (resumed) {
        // Broadcast events missed while away are not replayed: reload.
        sections.reviews.reload();
        sections.products.reload();
      }
    },
    onReset: () => {
      sections.reviews.reload();
      sections.products.reload();
    },
    onEvent: (type, data) => {
      if (type === 'review_queue') sections.reviews.onQueue(data);
      else if (type === 'stock_update') sections.products.onStock(data);
      else if (type === 'product_update') sections.products.onProduct(data);
      else if (type === 'error') console.warn('socket error frame', data);
    },
  });
  ctx.socket = socket;

  const router = tabs({
    nav,
    panels,
    initial: 'reviews',
    onShow: (name) => { for (const [k, s] of Object.entries(sections)) s.visible?.(k === name); },
  });
  router.show(location.hash.slice(1) || 'reviews');
  socket.start();
  // Test hook (documented in web/README.md): the live socket and the API client.
  window.__rp = { api, socket, sections };

  return {
    socket,
    destroy() {
      socket.stop();
      for (const s of Object.values(sections)) s.destroy?.();
    },
  };
}

if (api.session && api.user?.is_merchant) showMain();
else showLogin();
