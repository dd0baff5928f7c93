// The guest demo: what the mini-program does, in a browser page.
// REST for login, lists and uploads; the socket for live points, stock and
// review results, and for draws and exchanges (REST when the socket is down,
// with the same idempotency key).
import { Api } from '../shared/api.js';
import { RealtimeSocket } from '../shared/socket.js';
import {
  h, fill, showMsg, toast, commandId, fmtTime, fmtMoney, fmtInt, estimatePoints, pager, flash, tabs, badge, openDialog,
} from '../shared/ui.js';
import { header, loginCard, connBanner } from '../shared/shell.js';
import { Wheel } from './wheel.js';

const api = new Api('rp.play.session');
const root = document.getElementById('app');
let view = null;

const PRIZE_TYPE = { points: '积分', coupon: '优惠券', physical: '实物', empty: '未中奖' };
const SOURCE = {
  register: '注册奖励', lottery: '抽奖消耗', lottery_prize: '抽奖奖励', exchange: '积分兑换', photo_upload: '小票奖励', admin: '商家调整',
};
const ORDER_STATUS = { pending: '待核销', redeemed: '已核销' };

api.on((kind, detail) => {
  if (kind === 'logout' && view) {
    view.destroy();
    view = null;
    showLogin(detail);
  } else if (kind === 'refresh') {
    view?.socket.refreshToken(detail);
  }
});

function showLogin(reason) {
  const card = loginCard({
    api,
    title: '登录积分乐园',
    lead: '用手机号登录，抽奖、兑换、上传小票赚积分。',
    onSuccess: () => { showMain(); },
  });
  fill(root, header({ subtitle: '积分乐园 · 顾客演示' }), card.el);
  if (reason && reason.msg) showMsg(card.msg, reason);
  card.focus();
}

function showMain() {
  view?.destroy();
  view = mainView();
}

/* ------------------------------------------------------------------ */

function mainView() {
  const user = api.user || {};
  const conn = connBanner();
  const balanceEl = h('span', { class: 'num', 'data-testid': 'balance', 'data-value': user.total_points ?? '' }, String(user.total_points ?? '—'));
  const lastSeqEl = h('span', { class: 'num', 'data-testid': 'last-seq' }, '—');
  const logoutBtn = h('button', { type: 'button', class: 'btn btn-ghost btn-sm', 'data-testid': 'logout' }, '退出');
  logoutBtn.addEventListener('click', () => api.logout().catch((e) => toast(e.msg, 'error')));

  const head = header({
    subtitle: '积分乐园',
    right: h('div', { class: 'header-user' },
      conn.dot(),
      h('span', { class: 'points-chip', title: '我的积分' }, h('span', { class: 'sr-only' }, '我的积分'), '积分 ', balanceEl),
      logoutBtn),
  });

  const nav = h('nav', { class: 'tabbar', 'aria-label': '功能' },
    tabBtn('wheel', '幸运转盘'), tabBtn('shop', '积分兑换'), tabBtn('upload', '上传小票'), tabBtn('history', '我的记录'));

  const wheelPanel = h('section', { 'data-panel': 'wheel', 'aria-label': '幸运转盘' });
  const shopPanel = h('section', { 'data-panel': 'shop', 'aria-label': '积分兑换' });
  const uploadPanel = h('section', { 'data-panel': 'upload', 'aria-label': '上传小票' });
  const historyPanel = h('section', { 'data-panel': 'history', 'aria-label': '我的记录' });

  const main = h('main', { class: 'container play' }, wheelPanel, shopPanel, uploadPanel, historyPanel);
  const foot = h('footer', { class: 'app-foot' },
    `${user.nickname || ''} ${user.mobile || ''} · 同步序号 `, lastSeqEl);
  fill(root, h('div', { class: 'topbar' }, head, conn.el, nav), main, foot);

  function setBalance(n, animate = true) {
    if (n === undefined || n === null) return;
    if (balanceEl.textContent !== String(n) && animate) flash(balanceEl.parentElement);
    balanceEl.textContent = String(n);
    balanceEl.dataset.value = String(n);
  }

  const wheel = wheelSection(wheelPanel, { setBalance });
  const shop = shopSection(shopPanel, { setBalance });
  const upload = uploadSection(uploadPanel);
  const history = historySection(historyPanel);

  const socket = new RealtimeSocket({
    api,
    onState: (state, info) => conn.set(state, info),
    onSeq: (seq) => { lastSeqEl.textContent = String(seq); },
    onWelcome: (w, resumed) => {
      setBalance(w.total_points, resumed);
      if (resumed) {
        // stock_update is latest-value only: reload what may have moved.
        shop.load();
        upload.loadList();
      }
    },
    onReset: () => {
      toast('离线太久，已重新加载数据', 'info');
      reloadAll();
    },
    onEvent: (type, data) => {
      switch (type) {
        case 'points_update':
          setBalance(data.total_points);
          toast(`${data.reason || SOURCE[data.source] || '积分变动'} ${data.change_points > 0 ? '+' : ''}${data.change_points} 积分`, data.change_points >= 0 ? 'ok' : 'info');
          history.stale('points');
          break;
        case 'review_result':
          upload.onReviewResult(data);
          history.stale('uploads');
          break;
        case 'stock_update':
          shop.onStock(data);
          break;
        case 'product_update':
          shop.onProduct(data);
          break;
        case 'error':
          console.warn('socket error frame', data);
          break;
        default:
          break;
      }
    },
  });
  wheel.socket = socket;
  shop.socket = socket;

  function reloadAll() {
    api.get('/api/user/info').then((u) => { api.setUser(u); setBalance(u.total_points); }).catch(() => {});
    wheel.loadConfig();
    shop.load();
    upload.loadList();
    history.reload();
  }

  const router = tabs({
    nav,
    panels: [wheelPanel, shopPanel, uploadPanel, historyPanel],
    initial: 'wheel',
    onShow: (name) => { if (name === 'history') history.showing(); },
  });
  router.show(location.hash.slice(1) || 'wheel');

  socket.start();
  reloadAll();
  // Test hook (documented in web/README.md): the live socket and the API client.
  window.__rp = { api, socket };

  return {
    socket,
    destroy() { socket.stop(); },
  };
}

function tabBtn(name, label) {
  return h('button', { type: 'button', class: 'tab', 'data-tab': name, 'data-testid': `nav-${name}` }, label);
}

/* ------------------------------------------------------------------ */
/* Wheel                                                               */

function wheelSection(panel, { setBalance }) {
  const canvas = h('canvas', { class: 'wheel-canvas', 'data-testid': 'wheel', role: 'img', 'aria-label': '幸运转盘', width: 600, height: 600 });
  const wheel = new Wheel(canvas);
  const countSeg = h('div', { class: 'seg', role: 'group', 'aria-label': '抽奖次数', 'data-testid': 'draw-counts' });
  const drawBtn = h('button', { type: 'button', class: 'btn btn-primary btn-lg btn-block', 'data-testid': 'draw-button', disabled: true }, '抽奖');
  const pityText = h('span', { class: 'num' }, '—');
  const pityBar = h('div', { class: 'bar-fill' });
  const pity = h('div', { class: 'pity', 'data-testid': 'pity' },
    h('div', { class: 'row-between small' }, h('span', {}, '保底进度'), pityText),
    h('div', { class: 'bar', 'aria-hidden': 'true' }, pityBar),
    h('div', { class: 'tiny', 'data-testid': 'pity-hint' }, ''));
  const meta = h('p', { class: 'card-sub', 'data-testid': 'wheel-meta' }, '正在加载转盘…');
  const err = h('div', { class: 'msg', 'data-testid': 'draw-error', hidden: true });
  const result = h('div', { class: 'draw-result', 'data-testid': 'draw-result', 'aria-live': 'polite', hidden: true });
  const odds = h('div', { class: 'odds', 'data-testid': 'odds' });

  panel.append(
    h('div', { class: 'card wheel-card' },
      h('div', { class: 'card-head' }, h('h2', {}, '幸运转盘'), meta),
      h('div', { class: 'wheel-box' }, canvas),
      h('div', { class: 'wheel-controls' }, countSeg, drawBtn),
      err,
      result,
      pity),
    h('details', { class: 'card odds-card' }, h('summary', {}, '奖品与公示概率'), odds),
  );

  const S = { config: null, count: 1, busy: false };
  const self = { socket: null, loadConfig };

  function renderConfig(cfg) {
    S.config = cfg;
    wheel.setPrizes(cfg.prizes || []);
    const counts = cfg.draw_counts?.length ? cfg.draw_counts : [1];
    if (!counts.includes(S.count)) S.count = counts[0];
    fill(countSeg, counts.map((n) => h('button', {
      type: 'button', 'aria-pressed': String(n === S.count), 'data-testid': `draw-count-${n}`, 'data-count': n,
      onclick: () => { S.count = n; renderConfig(S.config); },
    }, `${n} 连抽`.replace(/^1 连抽$/, '单抽'))));
    drawBtn.textContent = `抽 ${S.count} 次 · ${fmtInt(cfg.cost_points * S.count)} 积分`;
    drawBtn.disabled = S.busy;
    meta.textContent = `每次 ${fmtInt(cfg.cost_points)} 积分${cfg.daily_limit ? ` · 每日最多 ${cfg.daily_limit} 次` : ''}`;
    const p = cfg.pity || {};
    pityText.textContent = `${p.current ?? 0} / ${p.threshold ?? '—'}`;
    pity.dataset.current = String(p.current ?? 0);
    pity.dataset.threshold = String(p.threshold ?? '');
    pityBar.style.width = p.threshold ? `${Math.min(100, (100 * (p.current || 0)) / p.threshold)}%` : '0%';
    const left = (p.threshold || 0) - (p.current || 0);
    pity.querySelector('[data-testid="pity-hint"]').textContent = p.threshold
      ? (left <= 0 ? '下一次必得好礼' : `再抽 ${left} 次内必得好礼`) : '';
    fill(odds, h('ul', { class: 'odds-list' }, (cfg.prizes || []).map((pr) => h('li', {},
      h('span', { class: 'swatch', style: `background:${pr.color}` }),
      h('span', { class: 'odds-name' }, pr.prize_name, pr.is_activity ? ' ★' : ''),
      h('span', { class: 'tiny' }, PRIZE_TYPE[pr.prize_type] || pr.prize_type),
      h('span', { class: 'num odds-p' }, fmtProbability(pr.probability))))),
    h('p', { class: 'tiny' }, '概率由服务器公示并按此抽取；★ 为活动奖品。'));
  }

  async function loadConfig() {
    try {
      renderConfig(await api.get('/api/lottery/config'));
      showMsg(err, null);
    } catch (e) {
      showMsg(err, e);
      meta.textContent = '转盘暂不可用';
    }
  }

  drawBtn.addEventListener('click', async () => {
    if (S.busy || !S.config) return;
    S.busy = true;
    drawBtn.disabled = true;
    showMsg(err, null);
    result.hidden = true;
    wheel.spin();
    const id = commandId();
    const count = S.count;
    try {
      const data = self.socket?.isOpen
        ? await self.socket.command('lottery.draw', { draw_count: count }, { id, retry: true })
        : await api.post('/api/lottery/draw', { draw_count: count }, { idempotencyKey: id });
      const draws = data.draws || [];
      const last = draws[draws.length - 1];
      if (last) await wheel.land(last.angle, last.prize_id);
      else await wheel.halt();
      setBalance(data.remaining_points);
      showResult(draws, data);
      loadConfig(); // pity progress
    } catch (e) {
      await wheel.halt();
      showMsg(err, e);
    } finally {
      S.busy = false;
      drawBtn.disabled = false;
    }
  });

  function showResult(draws, data) {
    const last = draws[draws.length - 1];
    const won = (d) => d.prize_type !== 'empty';
    result.dataset.prizeId = last ? String(last.prize_id) : '';
    result.dataset.count = String(draws.length);
    fill(result,
      h('div', { class: 'result-main' },
        h('div', { class: 'tiny' }, draws.length > 1 ? `${draws.length} 连抽结果（转盘停在最后一次）` : '本次结果'),
        h('div', { class: 'result-name', 'data-testid': 'prize-name' }, last ? last.prize_name : '—'),
        last && won(last) ? h('div', { class: 'small muted' }, prizeLine(last)) : null),
      draws.length > 1
        ? h('ol', { class: 'result-list' }, draws.map((d) => h('li', { 'data-testid': 'draw-item', 'data-prize-id': d.prize_id, class: won(d) ? 'won' : '' },
          d.prize_name, d.is_pity ? badge('pity', '保底') : null)))
        : (last?.is_pity ? badge('pity', '保底触发') : null),
      h('div', { class: 'tiny' }, `消耗 ${fmtInt(data.points_cost)} 积分，剩余 ${fmtInt(data.remaining_points)} 积分`));
    result.hidden = false;
  }

  loadConfig();
  return self;
}

function prizeLine(d) {
  if (d.prize_type === 'points') return `已到账 ${fmtInt(d.prize_value)} 积分`;
  if (d.prize_type === 'coupon') return `优惠券（价值 ${fmtMoney(d.prize_value)}），请到店出示`;
  if (d.prize_type === 'physical') return `实物奖品（价值 ${fmtMoney(d.prize_value)}），请到店领取`;
  return '';
}

/** 0.035 → "3.50%", computed in ten-thousandths (no float drift). */
function fmtProbability(p) {
  const w = Math.round(Number(p) * 10000);
  return `${Math.floor(w / 100)}.${String(w % 100).padStart(2, '0')}%`;
}

/* ------------------------------------------------------------------ */
/* Exchange                                                            */

function shopSection(panel, { setBalance }) {
  const list = h('div', { class: 'product-grid', 'data-testid': 'product-list' }, h('div', { class: 'loading' }, '加载中…'));
  const err = h('div', { class: 'msg', 'data-testid': 'shop-error', hidden: true });
  panel.append(h('div', { class: 'card' },
    h('div', { class: 'card-head' }, h('h2', {}, '积分兑换'), h('span', { class: 'card-sub' }, '库存实时更新')),
    err, list));

  // the exchange dialog
  const qty = h('input', { id: 'exchange-qty', class: 'input', type: 'number', min: 1, max: 99, value: 1, inputmode: 'numeric', 'data-testid': 'exchange-quantity' });
  const dTitle = h('h2', {}, '兑换');
  const dInfo = h('div', { class: 'small muted' });
  const dTotal = h('div', { class: 'num', 'data-testid': 'exchange-total' });
  const dErr = h('div', { class: 'msg', 'data-testid': 'exchange-error', hidden: true });
  const dErrDetail = h('div', { class: 'tiny', 'data-testid': 'exchange-error-detail', hidden: true });
  const dCode = h('div', { class: 'exchange-done', 'data-testid': 'exchange-result', hidden: true });
  const confirm = h('button', { type: 'button', class: 'btn btn-primary', 'data-testid': 'exchange-confirm' }, '确认兑换');
  const cancel = h('button', { type: 'button', class: 'btn btn-ghost', 'data-testid': 'exchange-cancel' }, '取消');
  const dialog = h('dialog', { class: 'dialog', 'data-testid': 'exchange-dialog', 'aria-labelledby': 'exchange-title' },
    h('div', { class: 'dialog-head' }, dTitle, h('button', { type: 'button', class: 'icon-btn', 'aria-label': '关闭', onclick: () => dialog.close() }, '×')),
    h('div', { class: 'dialog-body stack' }, dInfo,
      h('div', { class: 'field' }, h('label', { for: 'exchange-qty' }, '数量（1–99）'), qty),
      h('div', { class: 'row-between' }, h('span', { class: 'muted small' }, '合计'), dTotal),
      dErr, dErrDetail, dCode),
    h('div', { class: 'dialog-foot' }, cancel, confirm));
  dTitle.id = 'exchange-title';
  document.body.append(dialog);
  cancel.addEventListener('click', () => dialog.close());

  const products = new Map();
  let current = null;
  let busy = false;
  const self = { socket: null, load, onStock, onProduct };

  function card(p) {
    const soldOut = p.stock <= 0;
    return h('article', { class: 'product', 'data-testid': 'product', 'data-product-id': p.product_id },
      h('div', { class: 'product-top' },
        h('span', { class: 'badge' }, p.category || '商品'),
        h('span', { class: 'small muted' }, '库存 ', h('span', { class: 'num', 'data-testid': 'stock', 'data-product-id': p.product_id }, String(p.stock)))),
      h('h3', { 'data-testid': 'product-name' }, p.name),
      p.description ? h('p', { class: 'small muted product-desc' }, p.description) : null,
      h('div', { class: 'row-between product-foot' },
        h('span', { class: 'price' }, h('strong', { class: 'num', 'data-testid': 'product-points' }, fmtInt(p.exchange_points)), ' 积分'),
        h('button', {
          type: 'button', class: 'btn btn-primary btn-sm', 'data-testid': 'exchange-button', 'data-product-id': p.product_id, disabled: soldOut,
          onclick: () => open(p.product_id),
        }, soldOut ? '已兑完' : '兑换')));
  }

  function render() {
    const items = [...products.values()].sort((a, b) => (a.sort_order ?? 0) - (b.sort_order ?? 0) || a.product_id - b.product_id);
    fill(list, items.length ? items.map(card) : h('div', { class: 'empty' }, '暂无可兑换的商品'));
  }

  async function load() {
    try {
      const all = [];
      for (let page = 1; page <= 20; page++) {
        const d = await api.get('/api/exchange/products', { page, page_size: 100 });
        all.push(...(d.products || []));
        if (page >= (d.pagination?.total_pages || 1)) break;
      }
      products.clear();
      for (const p of all) products.set(p.product_id, p);
      render();
      showMsg(err, null);
    } catch (e) {
      showMsg(err, e);
    }
  }

  function onStock(d) {
    const p = products.get(d.product_id);
    if (!p) return;
    p.stock = d.stock;
    const cell = list.querySelector(`[data-testid="stock"][data-product-id="${d.product_id}"]`);
    if (cell && cell.textContent !== String(d.stock)) { cell.textContent = String(d.stock); flash(cell); }
    const btn = list.querySelector(`[data-testid="exchange-button"][data-product-id="${d.product_id}"]`);
    if (btn) { btn.disabled = d.stock <= 0; btn.textContent = d.stock <= 0 ? '已兑完' : '兑换'; }
    if (current === d.product_id) updateTotal();
  }

  function onProduct(d) {
    const p = products.get(d.product_id);
    if (d.status && d.status !== 'active') {
      if (p) { products.delete(d.product_id); render(); }
      return;
    }
    if (!p) { load(); return; } // newly listed: fetch its full record
    Object.assign(p, Object.fromEntries(Object.entries(d).filter(([k, v]) => v !== undefined && k !== 'timestamp')));
    const old = list.querySelector(`[data-testid="product"][data-product-id="${d.product_id}"]`);
    if (old) { const n = card(p); old.replaceWith(n); flash(n); }
  }

  function updateTotal() {
    const p = products.get(current);
    const n = Number.parseInt(qty.value, 10);
    dTotal.textContent = p && n > 0 ? `${fmtInt(p.exchange_points * n)} 积分` : '—';
    dInfo.textContent = p ? `${p.exchange_points} 积分 / 件 · 库存 ${p.stock}` : '';
  }

  function open(id) {
    current = id;
    const p = products.get(id);
    dTitle.textContent = `兑换「${p.name}」`;
    qty.value = '1';
    showMsg(dErr, null);
    dErrDetail.hidden = true;
    dCode.hidden = true;
    confirm.hidden = false;
    cancel.textContent = '取消';
    qty.disabled = false;
    updateTotal();
    openDialog(dialog);
    qty.focus();
  }
  qty.addEventListener('input', updateTotal);

  confirm.addEventListener('click', async () => {
    if (busy || current === null) return;
    busy = true;
    confirm.disabled = true;
    showMsg(dErr, null);
    dErrDetail.textContent = '';
    dErrDetail.hidden = true;
    const id = commandId();
    const body = { product_id: current, quantity: Number.parseInt(qty.value, 10) || 0 };
    try {
      const d = self.socket?.isOpen
        ? await self.socket.command('exchange.submit', body, { id, retry: true })
        : await api.post('/api/exchange/submit', body, { idempotencyKey: id });
      setBalance(d.remaining_points);
      onStock({ product_id: d.product_id, stock: d.remaining_stock });
      fill(dCode,
        h('div', { class: 'tiny' }, '兑换成功，到店出示兑换码核销'),
        h('div', { class: 'code-big mono', 'data-testid': 'exchange-code' }, d.exchange_code),
        h('div', { class: 'small muted' }, `共 ${d.quantity} 件，消耗 ${fmtInt(d.total_cost)} 积分`));
      dCode.hidden = false;
      confirm.hidden = true;
      qty.disabled = true;
      cancel.textContent = '完成';
    } catch (e) {
      showMsg(dErr, e);
      const x = e.data || {};
      if (x.shortage !== undefined) dErrDetail.textContent = `需要 ${fmtInt(x.required)} 积分，当前 ${fmtInt(x.current)}，还差 ${fmtInt(x.shortage)}`;
      else if (x.available_stock !== undefined) dErrDetail.textContent = `当前库存 ${x.available_stock}`;
      dErrDetail.hidden = !dErrDetail.textContent;
    } finally {
      busy = false;
      confirm.disabled = false;
    }
  });

  load();
  return self;
}

/* ------------------------------------------------------------------ */
/* Receipt upload                                                      */

function uploadSection(panel) {
  // The native file input stays the control (keyboard, screen readers,
  // tests); the label around it is what people see and tap.
  const file = h('input', { id: 'upload-file', class: 'file-input', type: 'file', name: 'image', accept: 'image/*', capture: 'environment', 'data-testid': 'upload-file' });
  const fileName = h('span', { class: 'file-name', 'data-testid': 'upload-file-name' }, '支持 JPEG、PNG、WebP，最大 5 MB');
  const picker = h('label', { class: 'file-picker', for: 'upload-file' },
    cameraIcon(),
    h('span', { class: 'file-text' }, h('strong', {}, '拍照或选择小票照片'), fileName));
  const preview = h('img', { class: 'upload-preview', alt: '小票预览', hidden: true, 'data-testid': 'upload-preview' });
  const amount = h('input', { id: 'upload-amount', class: 'input', type: 'text', name: 'amount', inputmode: 'decimal', placeholder: '例如 88.50', autocomplete: 'off', 'data-testid': 'upload-amount' });
  const estimate = h('div', { class: 'help', 'data-testid': 'upload-estimate' }, '每消费 1 元可得 10 积分，审核通过后到账');
  const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-block btn-lg', 'data-testid': 'upload-submit' }, '提交审核');
  const err = h('div', { class: 'msg', 'data-testid': 'upload-error', hidden: true });
  const status = h('div', { class: 'msg', 'data-testid': 'upload-status', hidden: true });
  const reviewResult = h('div', { class: 'review-result', 'data-testid': 'review-result', 'aria-live': 'polite', hidden: true });
  const form = h('form', { class: 'form-grid', 'data-testid': 'upload-form', novalidate: true },
    h('div', { class: 'field' }, h('span', { class: 'label' }, '小票照片'), file, picker, preview),
    h('div', { class: 'field' }, h('label', { for: 'upload-amount' }, '消费金额（元）'), amount, estimate),
    err, status, submit);
  const listBox = h('div', { 'data-testid': 'upload-list' });

  panel.append(
    h('div', { class: 'grid grid-2' },
      h('div', { class: 'card' }, h('div', { class: 'card-head' }, h('h2', {}, '上传小票赚积分')), form, reviewResult),
      h('div', { class: 'card' }, h('div', { class: 'card-head' }, h('h2', {}, '我的小票'),
        h('button', { type: 'button', class: 'btn btn-ghost btn-sm', 'data-testid': 'upload-list-reload', onclick: () => loadList() }, '刷新')), listBox)));

  let page = 1;
  let previewUrl = null;
  file.addEventListener('change', () => {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    const f = file.files?.[0];
    if (f) { previewUrl = URL.createObjectURL(f); preview.src = previewUrl; preview.hidden = false; } else preview.hidden = true;
    fileName.textContent = f ? `${f.name} · ${fmtSize(f.size)}` : '支持 JPEG、PNG、WebP，最大 5 MB';
    picker.classList.toggle('chosen', !!f);
  });
  amount.addEventListener('input', () => {
    const est = estimatePoints(amount.value);
    estimate.textContent = amount.value.trim() === '' ? '每消费 1 元可得 10 积分，审核通过后到账'
      : est === null ? '金额为 0.01–9999.99，最多两位小数' : `预计可得 ${fmtInt(est)} 积分（以审核为准）`;
    estimate.classList.toggle('warn', amount.value.trim() !== '' && est === null);
  });

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    showMsg(err, null);
    showMsg(status, null);
    const fd = new FormData();
    if (file.files?.[0]) fd.append('image', file.files[0]);
    fd.append('amount', amount.value.trim());
    submit.disabled = true;
    submit.textContent = '上传中…';
    try {
      const d = await api.request('/api/photo/upload', { method: 'POST', form: fd });
      status.dataset.uploadId = d.upload_id;
      showMsg(status, d.message || `已提交，预计 ${d.estimated_points} 积分，等待商家审核`, 'ok');
      form.reset();
      preview.hidden = true;
      fileName.textContent = '支持 JPEG、PNG、WebP，最大 5 MB';
      picker.classList.remove('chosen');
      estimate.textContent = '每消费 1 元可得 10 积分，审核通过后到账';
      page = 1;
      loadList();
    } catch (e2) {
      showMsg(err, e2);
    } finally {
      submit.disabled = false;
      submit.textContent = '提交审核';
    }
  });

  async function loadList() {
    try {
      const d = await api.get('/api/photo/history', { page, page_size: 10 });
      fill(listBox,
        d.uploads?.length ? h('ul', { class: 'list' }, d.uploads.map(uploadRow)) : h('div', { class: 'empty' }, '还没有上传过小票'),
        pager(d.pagination, (p) => { page = p; loadList(); }, 'upload-pager'));
    } catch (e) {
      fill(listBox, h('div', { class: 'msg', 'data-testid': 'upload-list-error', 'data-code': e.code }, e.msg));
    }
  }

  function onReviewResult(d) {
    const ok = d.status === 'approved';
    reviewResult.dataset.uploadId = d.upload_id;
    reviewResult.dataset.status = d.status;
    reviewResult.className = `review-result ${ok ? 'ok' : 'bad'}`;
    fill(reviewResult,
      h('div', { class: 'result-title' }, ok ? '小票审核通过' : '小票未通过审核'),
      h('div', { class: 'small' }, ok ? `获得 ${fmtInt(d.points_awarded)} 积分` : `原因：${d.reason || '—'}`),
      h('div', { class: 'tiny' }, fmtTime(d.timestamp, true)));
    reviewResult.hidden = false;
    toast(ok ? `小票审核通过，+${d.points_awarded} 积分` : '小票未通过审核', ok ? 'ok' : 'error');
    const row = listBox.querySelector(`[data-upload-id="${d.upload_id}"]`);
    if (row) loadList();
  }

  loadList();
  return { loadList, onReviewResult };
}

function fmtSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** A small camera outline for the upload picker. */
function cameraIcon() {
  const svg = h('svg:svg', { class: 'file-icon', viewBox: '0 0 24 24', 'aria-hidden': 'true' });
  svg.append(
    h('svg:path', { d: 'M4 8h3l2-3h6l2 3h3a1 1 0 0 1 1 1v9a1 1 0 0 1-1 1H4a1 1 0 0 1-1-1V9a1 1 0 0 1 1-1z' }),
    h('svg:circle', { cx: 12, cy: 13, r: 3.5 }));
  return svg;
}

function uploadRow(u) {
  return h('li', { class: 'list-row', 'data-testid': 'upload-row', 'data-upload-id': u.upload_id, 'data-status': u.review_status },
    u.image_url ? h('img', { class: 'thumb', src: u.image_url, alt: '小票', loading: 'lazy' }) : null,
    h('div', { class: 'list-main' },
      h('div', {}, fmtMoney(u.amount), ' · ', h('span', { class: 'muted small' }, `预计 ${fmtInt(u.estimated_points)} 积分`)),
      h('div', { class: 'tiny' }, fmtTime(u.created_at),
        u.review_status === 'approved' ? ` · 获得 ${fmtInt(u.points_awarded)} 积分` : '',
        u.review_status === 'rejected' && u.review_reason ? ` · ${u.review_reason}` : '')),
    badge(u.review_status));
}

/* ------------------------------------------------------------------ */
/* History                                                             */

function historySection(panel) {
  const KINDS = {
    points: {
      label: '积分', path: '/api/user/points/records', key: 'records',
      row: (r) => h('li', { class: 'list-row', 'data-testid': 'history-row', 'data-id': r.record_id },
        h('div', { class: 'list-main' },
          h('div', {}, r.description || SOURCE[r.source] || r.source),
          h('div', { class: 'tiny' }, `${fmtTime(r.created_at)} · ${SOURCE[r.source] || r.source} · 余额 ${fmtInt(r.balance_after)}`)),
        h('strong', { class: `num points-${r.type}` }, `${r.type === 'spend' ? '−' : '+'}${fmtInt(r.points)}`)),
    },
    draws: {
      label: '抽奖', path: '/api/lottery/records', key: 'draws',
      row: (d) => h('li', { class: 'list-row', 'data-testid': 'history-row', 'data-id': d.draw_id, 'data-prize-id': d.prize_id },
        h('div', { class: 'list-main' },
          h('div', {}, d.prize_name, d.is_pity ? badge('pity', '保底') : null),
          h('div', { class: 'tiny' }, `${fmtTime(d.created_at)} · ${PRIZE_TYPE[d.prize_type] || d.prize_type}${d.points_cost !== undefined ? ` · 消耗 ${d.points_cost} 积分` : ''}`))),
    },
    orders: {
      label: '订单', path: '/api/exchange/orders', key: 'orders',
      row: (o) => h('li', { class: 'list-row', 'data-testid': 'history-row', 'data-id': o.exchange_id, 'data-status': o.status },
        h('div', { class: 'list-main' },
          h('div', {}, `${o.product_name} × ${o.quantity}`),
          h('div', { class: 'tiny' }, `${fmtTime(o.created_at)} · ${fmtInt(o.total_cost)} 积分`, o.redeemed_at ? ` · 核销于 ${fmtTime(o.redeemed_at)}` : ''),
          h('div', { class: 'mono code-small', 'data-testid': 'order-code' }, o.exchange_code)),
        badge(o.status === 'pending' ? 'pending' : 'redeemed', ORDER_STATUS[o.status] || o.status)),
    },
    uploads: { label: '小票', path: '/api/photo/history', key: 'uploads', row: uploadRow },
  };
  let kind = 'points';
  let page = 1;
  const staleKinds = new Set();
  const seg = h('div', { class: 'seg', role: 'group', 'aria-label': '记录类型' });
  const box = h('div', { 'data-testid': 'history-list', 'data-kind': kind });
  panel.append(h('div', { class: 'card' },
    h('div', { class: 'card-head' }, h('h2', {}, '我的记录'), seg), box));

  function renderSeg() {
    fill(seg, Object.entries(KINDS).map(([k, v]) => h('button', {
      type: 'button', 'aria-pressed': String(k === kind), 'data-testid': `history-${k}`,
      onclick: () => { kind = k; page = 1; renderSeg(); load(); },
    }, v.label)));
  }

  async function load() {
    const k = KINDS[kind];
    box.dataset.kind = kind;
    staleKinds.delete(kind);
    fill(box, h('div', { class: 'loading' }, '加载中…'));
    try {
      const d = await api.get(k.path, { page, page_size: 20 });
      const items = d[k.key] || [];
      fill(box,
        items.length ? h('ul', { class: 'list' }, items.map(k.row)) : h('div', { class: 'empty' }, '暂无记录'),
        pager(d.pagination, (p) => { page = p; load(); }, 'history-pager'));
    } catch (e) {
      fill(box, h('div', { class: 'msg', 'data-testid': 'history-error', 'data-code': e.code }, e.msg));
    }
  }

  let visible = false;
  renderSeg();
  return {
    showing() { visible = true; load(); },
    reload() { if (visible) load(); },
    /** A live event changed a list: reload it if it is on screen. */
    stale(k) {
      staleKinds.add(k);
      if (!panel.hidden && (kind === k || (k === 'points' && kind === 'draws'))) load();
    },
  };
}

/* ------------------------------------------------------------------ */

if (api.session) showMain();
else showLogin();
