// Products: list (inactive included), create, edit, restock/adjust,
// activate/deactivate. Guests' exchanges move the stock live
// (`stock_update`); other consoles' edits arrive as `product_update`.
import { h, fill, showMsg, toast, fmtInt, fmtTime, pager, flash, badge, openDialog } from '../shared/ui.js';

const PAGE_SIZE = 50;
const OPERATION = { create: '新建商品', purchase: '顾客兑换', restock: '补货', admin_adjust: '盘点调整' };

export function productsSection(panel, ctx) {
  const { api } = ctx;
  let page = 1;
  const products = new Map();

  const err = h('div', { class: 'msg', 'data-testid': 'products-error', hidden: true });
  const tbody = h('tbody', { 'data-testid': 'product-list' });
  const pagerBox = h('div');
  const createBtn = h('button', { type: 'button', class: 'btn btn-primary', 'data-testid': 'product-create' }, '＋ 新建商品');
  const reloadBtn = h('button', { type: 'button', class: 'btn btn-ghost btn-sm', 'data-testid': 'products-reload', onclick: () => load() }, '刷新');
  panel.append(h('div', { class: 'card' },
    h('div', { class: 'card-head' },
      h('div', {}, h('h2', {}, '商品与库存'), h('div', { class: 'card-sub' }, '顾客兑换后库存实时变化')),
      h('div', { class: 'row' }, reloadBtn, createBtn)),
    err,
    h('div', { class: 'table-wrap' },
      h('table', { class: 'table stackable products-table' },
        h('thead', {}, h('tr', {},
          h('th', {}, 'ID'), h('th', {}, '商品'), h('th', {}, '分类'), h('th', {}, '所需积分'),
          h('th', {}, '库存'), h('th', {}, '已兑换'), h('th', {}, '状态'), h('th', {}, h('span', { class: 'sr-only' }, '操作')))),
        tbody)),
    pagerBox));

  /* ---------- product dialog (create / edit) ---------- */
  const f = {
    name: h('input', { id: 'pf-name', class: 'input', maxlength: 100, required: true, 'data-testid': 'product-name' }),
    category: h('input', { id: 'pf-category', class: 'input', maxlength: 50, required: true, list: 'pf-categories', 'data-testid': 'product-category' }),
    exchange_points: h('input', { id: 'pf-points', class: 'input num', type: 'number', min: 1, max: 10000000, step: 1, inputmode: 'numeric', required: true, 'data-testid': 'product-points' }),
    stock: h('input', { id: 'pf-stock', class: 'input num', type: 'number', min: 0, max: 1000000, step: 1, inputmode: 'numeric', 'data-testid': 'product-initial-stock' }),
    sort_order: h('input', { id: 'pf-sort', class: 'input num', type: 'number', step: 1, inputmode: 'numeric', 'data-testid': 'product-sort' }),
    status: h('select', { id: 'pf-status', class: 'input', 'data-testid': 'product-status' },
      h('option', { value: 'active' }, '上架（顾客可见）'), h('option', { value: 'inactive' }, '下架（顾客不可见）')),
    image: h('input', { id: 'pf-image', class: 'input', maxlength: 255, placeholder: '图片地址（可选）', 'data-testid': 'product-image' }),
    description: h('textarea', { id: 'pf-desc', class: 'input', maxlength: 500, rows: 3, 'data-testid': 'product-description' }),
  };
  const categories = h('datalist', { id: 'pf-categories' });
  const stockField = h('div', { class: 'field' }, h('label', { for: 'pf-stock' }, '初始库存'), f.stock,
    h('div', { class: 'help' }, '创建后库存只能通过「库存」调整'));
  const pErr = h('div', { class: 'msg', 'data-testid': 'product-form-error', hidden: true });
  const pTitle = h('h2', { id: 'pf-title' }, '新建商品');
  const pSave = h('button', { type: 'submit', class: 'btn btn-primary', 'data-testid': 'product-save' }, '保存');
  const pForm = h('form', { method: 'dialog', novalidate: true, 'data-testid': 'product-form' },
    h('div', { class: 'dialog-head' }, pTitle, h('button', { type: 'button', class: 'icon-btn', 'aria-label': '关闭', onclick: () => pDialog.close() }, '×')),
    h('div', { class: 'dialog-body' },
      h('div', { class: 'form-grid cols-2' },
        h('div', { class: 'field' }, h('label', { for: 'pf-name' }, '名称'), f.name),
        h('div', { class: 'field' }, h('label', { for: 'pf-category' }, '分类'), f.category, categories),
        h('div', { class: 'field' }, h('label', { for: 'pf-points' }, '所需积分'), f.exchange_points),
        stockField,
        h('div', { class: 'field' }, h('label', { for: 'pf-status' }, '状态'), f.status),
        h('div', { class: 'field' }, h('label', { for: 'pf-sort' }, '排序（小的在前）'), f.sort_order),
        h('div', { class: 'field span-2' }, h('label', { for: 'pf-image' }, '图片'), f.image),
        h('div', { class: 'field span-2' }, h('label', { for: 'pf-desc' }, '描述'), f.description)),
      pErr),
    h('div', { class: 'dialog-foot' },
      h('button', { type: 'button', class: 'btn btn-ghost', onclick: () => pDialog.close() }, '取消'), pSave));
  const pDialog = h('dialog', { class: 'dialog', 'aria-labelledby': 'pf-title', 'data-testid': 'product-dialog' }, pForm);
  document.body.append(pDialog);
  let editing = null; // product being edited, or null for a new one

  function openProduct(p) {
    editing = p || null;
    pTitle.textContent = p ? `编辑「${p.name}」` : '新建商品';
    f.name.value = p?.name ?? '';
    f.category.value = p?.category ?? '';
    f.exchange_points.value = p?.exchange_points ?? '';
    f.stock.value = p ? '' : '0';
    f.sort_order.value = p?.sort_order ?? '';
    f.status.value = p?.status ?? 'active';
    f.image.value = p?.image ?? '';
    f.description.value = p?.description ?? '';
    stockField.hidden = !!p;
    fill(categories, [...new Set([...products.values()].map((x) => x.category))].map((c) => h('option', { value: c })));
    showMsg(pErr, null);
    openDialog(pDialog);
    f.name.focus();
  }

  pForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    showMsg(pErr, null);
    const int = (el) => (el.value.trim() === '' ? undefined : Number(el.value));
    const all = {
      name: f.name.value.trim(),
      category: f.category.value.trim(),
      exchange_points: int(f.exchange_points),
      status: f.status.value,
      sort_order: int(f.sort_order),
      description: f.description.value,
      image: f.image.value.trim() || undefined,
    };
    let body;
    if (editing) {
      // Only what changed: the server refuses `stock` here and keeps the rest.
      body = {};
      for (const [k, v] of Object.entries(all)) if (v !== undefined && v !== (editing[k] ?? (k === 'description' ? '' : undefined))) body[k] = v;
      if (!Object.keys(body).length) { pDialog.close(); return; }
    } else {
      body = { ...all, stock: int(f.stock) };
      if (!body.description) delete body.description;
    }
    pSave.disabled = true;
    try {
      const saved = editing
        ? await api.put(`/api/merchant/products/${editing.product_id}`, body)
        : await api.post('/api/merchant/products', body);
      upsert(saved, true);
      pDialog.close();
      toast(editing ? '商品已保存' : '商品已创建', 'ok');
    } catch (e2) {
      showMsg(pErr, e2);
    } finally {
      pSave.disabled = false;
    }
  });

  /* ---------- stock dialog ---------- */
  const sOp = h('select', { id: 'sf-op', class: 'input', 'data-testid': 'stock-operation' },
    h('option', { value: 'restock' }, '补货（增加）'), h('option', { value: 'admin_adjust' }, '盘点调整（可为负数）'));
  const sQty = h('input', { id: 'sf-qty', class: 'input num', type: 'number', step: 1, inputmode: 'numeric', 'data-testid': 'stock-quantity' });
  const sReason = h('input', { id: 'sf-reason', class: 'input', maxlength: 200, placeholder: '盘点调整必填', 'data-testid': 'stock-reason' });
  const sErr = h('div', { class: 'msg', 'data-testid': 'stock-form-error', hidden: true });
  const sErrDetail = h('div', { class: 'tiny', 'data-testid': 'stock-form-error-detail', hidden: true });
  const sTitle = h('h2', { id: 'sf-title' }, '库存');
  const sNow = h('div', { class: 'stock-now' });
  const sHistory = h('div', { class: 'stock-history', 'data-testid': 'stock-history' });
  const sSave = h('button', { type: 'submit', class: 'btn btn-primary', 'data-testid': 'stock-save' }, '确认');
  const sForm = h('form', { novalidate: true, 'data-testid': 'stock-form' },
    h('div', { class: 'dialog-head' }, sTitle, h('button', { type: 'button', class: 'icon-btn', 'aria-label': '关闭', onclick: () => sDialog.close() }, '×')),
    h('div', { class: 'dialog-body stack' },
      sNow,
      h('div', { class: 'form-grid cols-2' },
        h('div', { class: 'field' }, h('label', { for: 'sf-op' }, '操作'), sOp),
        h('div', { class: 'field' }, h('label', { for: 'sf-qty' }, '数量'), sQty),
        h('div', { class: 'field span-2' }, h('label', { for: 'sf-reason' }, '原因'), sReason)),
      sErr, sErrDetail,
      h('h3', {}, '最近变动'), sHistory),
    h('div', { class: 'dialog-foot' },
      h('button', { type: 'button', class: 'btn btn-ghost', onclick: () => sDialog.close() }, '取消'), sSave));
  const sDialog = h('dialog', { class: 'dialog', 'aria-labelledby': 'sf-title', 'data-testid': 'stock-dialog' }, sForm);
  document.body.append(sDialog);
  let stocking = null;

  function renderStockNow() {
    const p = products.get(stocking);
    if (p) fill(sNow, '当前库存 ', h('strong', { class: 'num', 'data-testid': 'stock-dialog-current' }, String(p.stock)));
  }

  async function loadStockHistory(id) {
    fill(sHistory, h('div', { class: 'loading' }, '加载中…'));
    try {
      const d = await api.get(`/api/merchant/products/${id}/stock-changes`, { page: 1, page_size: 8 });
      const rows = d.changes || [];
      fill(sHistory, rows.length
        ? h('ul', { class: 'mini-list' }, rows.map((c) => h('li', {},
          h('span', {}, OPERATION[c.operation] || c.operation),
          h('span', { class: `num ${c.delta < 0 ? 'neg' : 'pos'}` }, `${c.delta > 0 ? '+' : ''}${c.delta}`),
          h('span', { class: 'tiny' }, `→ ${c.stock_after} · ${fmtTime(c.created_at)}${c.reason ? ` · ${c.reason}` : ''}`))))
        : h('div', { class: 'tiny' }, '暂无变动记录'));
    } catch (e) {
      fill(sHistory, h('div', { class: 'tiny' }, e.msg));
    }
  }

  function openStock(p) {
    stocking = p.product_id;
    sTitle.textContent = `库存「${p.name}」`;
    sOp.value = 'restock';
    sQty.value = '';
    sReason.value = '';
    showMsg(sErr, null);
    sErrDetail.hidden = true;
    renderStockNow();
    openDialog(sDialog);
    sQty.focus();
    loadStockHistory(p.product_id);
  }

  sForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    showMsg(sErr, null);
    sErrDetail.hidden = true;
    const body = { operation: sOp.value, quantity: sQty.value.trim() === '' ? 0 : Number(sQty.value) };
    if (sReason.value.trim()) body.reason = sReason.value.trim();
    sSave.disabled = true;
    try {
      const saved = await api.post(`/api/merchant/products/${stocking}/stock`, body);
      upsert(saved, true);
      sDialog.close();
      toast(`库存已更新为 ${saved.stock}`, 'ok');
    } catch (e2) {
      showMsg(sErr, e2);
      if (e2.data?.available_stock !== undefined) {
        sErrDetail.textContent = `当前可用库存：${e2.data.available_stock}`;
        sErrDetail.hidden = false;
      }
    } finally {
      sSave.disabled = false;
    }
  });

  /* ---------- list ---------- */
  function row(p) {
    const active = p.status === 'active';
    return h('tr', { 'data-testid': 'product-row', 'data-product-id': p.product_id, 'data-status': p.status },
      h('td', { 'data-label': 'ID', class: 'num muted hide-sm' }, String(p.product_id)),
      h('td', { class: 'cell-main' },
        h('div', { class: 'strong', 'data-testid': 'product-row-name' }, p.name),
        p.description ? h('div', { class: 'tiny clamp' }, p.description) : null),
      h('td', { 'data-label': '分类' }, p.category),
      h('td', { 'data-label': '所需积分', class: 'num', 'data-testid': 'product-row-points' }, fmtInt(p.exchange_points)),
      h('td', { 'data-label': '库存', class: `num stock-cell${p.stock <= 0 ? ' out' : p.stock <= 10 ? ' low' : ''}`, 'data-testid': 'stock', 'data-product-id': p.product_id }, String(p.stock)),
      h('td', { 'data-label': '已兑换', class: 'num' }, fmtInt(p.sales_count ?? 0)),
      h('td', { 'data-label': '状态' }, badge(p.status)),
      h('td', { class: 'cell-actions' },
        h('div', { class: 'row nowrap' },
          h('button', { type: 'button', class: 'btn btn-ghost btn-sm', 'data-testid': 'product-edit', 'data-product-id': p.product_id, onclick: () => openProduct(products.get(p.product_id)) }, '编辑'),
          h('button', { type: 'button', class: 'btn btn-ghost btn-sm', 'data-testid': 'product-stock', 'data-product-id': p.product_id, onclick: () => openStock(products.get(p.product_id)) }, '库存'),
          h('button', {
            type: 'button', class: `btn btn-sm ${active ? 'btn-danger' : 'btn-ok'}`, 'data-testid': 'product-toggle', 'data-product-id': p.product_id,
            onclick: (e) => toggle(p.product_id, e.currentTarget),
          }, active ? '下架' : '上架'))));
  }

  async function toggle(id, btn) {
    const p = products.get(id);
    btn.disabled = true;
    try {
      const saved = await api.put(`/api/merchant/products/${id}`, { status: p.status === 'active' ? 'inactive' : 'active' });
      upsert(saved, true);
      toast(saved.status === 'active' ? '已上架' : '已下架', 'ok');
    } catch (e) {
      showMsg(err, e);
      btn.disabled = false;
    }
  }

  function upsert(p, highlight) {
    const old = products.get(p.product_id);
    products.set(p.product_id, { ...old, ...p });
    const tr = tbody.querySelector(`tr[data-product-id="${p.product_id}"]`);
    const n = row(products.get(p.product_id));
    if (tr) tr.replaceWith(n);
    else { tbody.querySelector('.empty-row')?.remove(); tbody.append(n); }
    if (highlight) flash(n);
    if (stocking === p.product_id && sDialog.open) renderStockNow();
  }

  async function load() {
    try {
      const d = await api.get('/api/merchant/products', { page, page_size: PAGE_SIZE });
      showMsg(err, null);
      products.clear();
      for (const p of d.products || []) products.set(p.product_id, p);
      fill(tbody, (d.products || []).length ? (d.products || []).map(row)
        : h('tr', { class: 'empty-row' }, h('td', { colspan: 8, class: 'empty' }, '还没有商品，点击「新建商品」添加')));
      fill(pagerBox, pager(d.pagination, (pg) => { page = pg; load(); }, 'products-pager'));
    } catch (e) {
      showMsg(err, e);
    }
  }

  /** `stock_update`: {product_id, stock, product_name, operation, timestamp}. */
  function onStock(d) {
    const p = products.get(d.product_id);
    if (!p) return;
    p.stock = d.stock;
    if (d.operation === 'purchase') p.sales_count = p.sales_count ?? 0; // the count itself comes with the next reload
    const cell = tbody.querySelector(`[data-testid="stock"][data-product-id="${d.product_id}"]`);
    if (cell) {
      cell.textContent = String(d.stock);
      cell.classList.toggle('out', d.stock <= 0);
      cell.classList.toggle('low', d.stock > 0 && d.stock <= 10);
      flash(cell);
    }
    if (stocking === d.product_id && sDialog.open) { renderStockNow(); loadStockHistory(d.product_id); }
  }

  /** `product_update`: {product_id, name, exchange_points, status, stock, timestamp}. */
  function onProduct(d) {
    if (!products.has(d.product_id)) { load(); return; } // created elsewhere (or on another page)
    const patch = {};
    for (const k of ['name', 'exchange_points', 'status', 'stock']) if (d[k] !== undefined) patch[k] = d[k];
    upsert({ product_id: d.product_id, ...patch }, true);
  }

  createBtn.addEventListener('click', () => openProduct(null));
  load();

  return {
    reload: load,
    onStock,
    onProduct,
    destroy() { pDialog.remove(); sDialog.remove(); },
  };
}
