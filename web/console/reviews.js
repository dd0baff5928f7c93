// Review queue: pending receipts arrive live (`review_queue`, which carries
// everything a row shows), each can be approved (points prefilled from the
// estimate, the receipt's award cap `max_points` as the input's max; the
// server judges) or rejected with a reason. A reviewed upload leaves the
// queue on every open console.
import { h, fill, showMsg, toast, fmtTime, fmtMoney, fmtInt, pager, flash, badge, openDialog } from '../shared/ui.js';

const REASONS = ['小票照片不清晰', '非本店小票', '小票重复上传', '金额与小票不符', '小票已过期'];
const FILTERS = [['pending', '待审核'], ['approved', '已通过'], ['rejected', '已驳回'], ['', '全部']];
const PAGE_SIZE = 20;

export function reviewsSection(panel, ctx) {
  const { api } = ctx;
  let filter = 'pending';
  let page = 1;
  let pollTimer = null;
  let countTimer = null;
  let reloadingImages = 0;

  const seg = h('div', { class: 'seg', role: 'group', 'aria-label': '筛选' });
  const listEl = h('div', { class: 'review-grid', 'data-testid': 'review-list' });
  const pagerBox = h('div');
  const err = h('div', { class: 'msg', 'data-testid': 'reviews-error', hidden: true });
  const reload = h('button', { type: 'button', class: 'btn btn-ghost btn-sm', 'data-testid': 'reviews-reload' }, '刷新');
  reload.addEventListener('click', () => load());
  const datalist = h('datalist', { id: 'reject-reasons' }, REASONS.map((r) => h('option', { value: r })));

  panel.append(h('div', { class: 'card' },
    h('div', { class: 'card-head' },
      h('div', {}, h('h2', {}, '小票审核'), h('div', { class: 'card-sub' }, '顾客上传的小票会实时出现在这里')),
      h('div', { class: 'row' }, seg, reload)),
    err, listEl, pagerBox, datalist));

  // lightbox for the full receipt
  const bigImg = h('img', { alt: '小票大图', class: 'lightbox-img', 'data-testid': 'review-image-large' });
  const lightbox = h('dialog', { class: 'dialog lightbox', 'aria-label': '小票大图' },
    h('div', { class: 'dialog-head' }, h('h2', {}, '小票'), h('button', { type: 'button', class: 'icon-btn', 'aria-label': '关闭', onclick: () => lightbox.close() }, '×')),
    h('div', { class: 'dialog-body' }, bigImg));
  document.body.append(lightbox);

  function renderSeg() {
    fill(seg, FILTERS.map(([v, label]) => h('button', {
      type: 'button', 'aria-pressed': String(v === filter), 'data-testid': `reviews-filter-${v || 'all'}`,
      onclick: () => { filter = v; page = 1; renderSeg(); load(); },
    }, label)));
  }

  function row(r) {
    const pending = r.review_status === 'pending';
    // The server's cap for this receipt (min(multiplier × estimate, maximum), at least 1).
    const cap = Number.isFinite(Number(r.max_points)) && r.max_points !== null ? Number(r.max_points) : null;
    const img = h('img', { src: r.image_url || undefined, alt: `小票，金额 ${fmtMoney(r.amount)}`, loading: 'lazy', 'data-testid': 'review-image' });
    img.addEventListener('error', () => {
      // A signed URL may have expired while the page stayed open: fetch fresh ones once.
      if (reloadingImages < 1) {
        reloadingImages += 1;
        setTimeout(() => load({ merge: true }).finally(() => { setTimeout(() => { reloadingImages = 0; }, 30_000); }), 500);
      }
    });
    const thumb = h('button', { type: 'button', class: 'receipt-thumb', 'aria-label': '查看小票大图', onclick: () => { bigImg.src = img.src; openDialog(lightbox); } }, img);
    const msg = h('div', { class: 'msg', 'data-testid': 'review-error', hidden: true });
    const el = h('article', { class: 'review-card', 'data-testid': 'review-row', 'data-upload-id': r.upload_id, 'data-status': r.review_status });
    el.append(
      thumb,
      h('div', { class: 'review-body' },
        h('div', { class: 'row-between' },
          h('strong', { class: 'review-amount num', 'data-testid': 'review-amount' }, fmtMoney(r.amount)),
          badge(r.review_status)),
        h('div', { class: 'small muted' },
          '预计 ', h('strong', { class: 'num', 'data-testid': 'review-estimate' }, fmtInt(r.estimated_points)), ' 积分',
          r.user_mobile ? ` · ${r.user_mobile}` : (r.user_id ? ` · 用户 ${r.user_id}` : '')),
        h('div', { class: 'tiny' }, `上传于 ${fmtTime(r.created_at, true)}`),
        pending ? actions(r, cap, msg, el) : reviewed(r),
        msg));
    return el;
  }

  function reviewed(r) {
    return h('div', { class: 'small review-done' },
      r.review_status === 'approved' ? `发放 ${fmtInt(r.points_awarded)} 积分` : `原因：${r.review_reason || '—'}`,
      r.reviewed_at ? h('span', { class: 'tiny' }, ` · ${fmtTime(r.reviewed_at)}`) : null);
  }

  function actions(r, cap, msg, el) {
    const idp = `pts-${r.upload_id}`;
    const idr = `rsn-${r.upload_id}`;
    const points = h('input', {
      id: idp, class: 'input input-sm num', type: 'number', inputmode: 'numeric', min: 1, max: cap ?? undefined, step: 1,
      value: r.estimated_points, 'data-testid': 'review-points', 'aria-describedby': `${idp}-cap`,
    });
    const capText = cap === null ? '' : `上限 ${fmtInt(cap)}`;
    const capHint = h('div', { id: `${idp}-cap`, class: 'help', 'data-testid': 'review-cap', 'data-cap': cap ?? '' }, capText);
    points.addEventListener('input', () => {
      // A value over the cap is still sent: the server judges and says why.
      const over = cap !== null && Number(points.value) > cap;
      capHint.classList.toggle('warn', over);
      capHint.textContent = over ? `超过上限 ${fmtInt(cap)}，服务器会拒绝` : capText;
    });
    const reason = h('input', { id: idr, class: 'input input-sm', type: 'text', list: 'reject-reasons', maxlength: 200, placeholder: '驳回原因', 'data-testid': 'review-reason' });
    const approve = h('button', { type: 'button', class: 'btn btn-ok btn-sm', 'data-testid': 'approve' }, '通过');
    const reject = h('button', { type: 'button', class: 'btn btn-danger btn-sm', 'data-testid': 'reject' }, '驳回');

    async function send(body, okText) {
      approve.disabled = reject.disabled = true;
      showMsg(msg, null);
      try {
        const d = await api.post('/api/merchant/review', body);
        toast(okText(d), 'ok');
        settle(r.upload_id, d.action === 'approve' ? 'approved' : 'rejected');
      } catch (e) {
        showMsg(msg, e);
        if (e.code === 6004) {
          // Someone else reviewed it first: it is out of the queue.
          el.dataset.status = e.data?.current_status || 'reviewed';
          el.querySelector('.review-actions')?.remove();
          scheduleCount();
        } else {
          approve.disabled = reject.disabled = false;
        }
      }
    }

    approve.addEventListener('click', () => {
      const body = { upload_id: r.upload_id, action: 'approve' };
      if (points.value.trim() !== '') body.points = Number(points.value);
      send(body, (d) => `已通过，发放 ${fmtInt(d.points_awarded)} 积分`);
    });
    reject.addEventListener('click', () => {
      send({ upload_id: r.upload_id, action: 'reject', reason: reason.value.trim() }, () => '已驳回');
    });

    return h('div', { class: 'review-actions' },
      h('div', { class: 'field' }, h('label', { for: idp }, '发放积分'),
        h('div', { class: 'field-row' }, points, approve), capHint),
      h('div', { class: 'field' }, h('label', { for: idr }, '驳回原因'),
        h('div', { class: 'field-row' }, reason, reject)));
  }

  /** An upload left the pending state (here or on another console). */
  function settle(uploadId, status) {
    const el = listEl.querySelector(`[data-testid="review-row"][data-upload-id="${CSS.escape(uploadId)}"]`);
    if (el && filter === 'pending') {
      el.classList.add('leaving');
      el.dataset.status = status;
      setTimeout(() => { el.remove(); emptyState(); }, 250);
    } else if (el && (filter === '' || filter === status)) {
      load();
    }
    scheduleCount();
  }

  function emptyState() {
    if (!listEl.querySelector('[data-testid="review-row"]')) {
      fill(listEl, h('div', { class: 'empty', 'data-testid': 'reviews-empty' }, filter === 'pending' ? '没有待审核的小票' : '暂无记录'));
    }
  }

  /**
   * Loads the page. `merge` keeps rows already shown (and what the merchant
   * typed in them): it only adds new ones and drops those gone.
   */
  async function load({ merge = false } = {}) {
    try {
      const d = await api.get('/api/merchant/reviews', { status: filter || undefined, page, page_size: PAGE_SIZE });
      showMsg(err, null);
      const items = d.reviews || [];
      if (merge) {
        const shown = new Map(Array.from(listEl.querySelectorAll('[data-testid="review-row"]')).map((e) => [e.dataset.uploadId, e]));
        const fresh = new Set(items.map((r) => r.upload_id));
        for (const [id, e] of shown) if (!fresh.has(id) && !e.querySelector('[data-testid="review-error"]:not([hidden])')) e.remove();
        listEl.querySelector('[data-testid="reviews-empty"]')?.remove();
        for (const r of items) {
          const e = shown.get(r.upload_id);
          if (!e) listEl.append(row(r));
          else if (e.dataset.status !== r.review_status) e.replaceWith(row(r));
          else {
            // Same row: keep what was typed, take the freshly signed image URL.
            const img = e.querySelector('[data-testid="review-image"]');
            if (img && r.image_url && img.getAttribute('src') !== r.image_url) img.src = r.image_url;
          }
        }
      } else {
        fill(listEl, items.map(row));
      }
      emptyState();
      fill(pagerBox, pager(d.pagination, (p) => { page = p; load(); }, 'reviews-pager'));
      if (filter === 'pending') ctx.setPending(d.pagination?.total ?? items.length);
      else scheduleCount();
    } catch (e) {
      showMsg(err, e);
    }
  }

  /** The nav badge: how many are pending (debounced, one small request). */
  function scheduleCount() {
    clearTimeout(countTimer);
    countTimer = setTimeout(async () => {
      try {
        const d = await api.get('/api/merchant/reviews', { status: 'pending', page: 1, page_size: 1 });
        ctx.setPending(d.pagination?.total ?? 0);
      } catch { /* shown elsewhere */ }
    }, 300);
  }

  /**
   * `review_queue`: {upload_id, status, user_id, user_mobile, image_url,
   * max_points, amount, estimated_points, points_awarded, created_at} —
   * everything a row shows, so a new upload needs no request.
   */
  function onQueue(d) {
    if (d.status === 'pending') {
      scheduleCount();
      if (filter !== 'pending' && filter !== '') return;
      if (listEl.querySelector(`[data-upload-id="${CSS.escape(d.upload_id)}"]`)) return;
      // Pending is oldest first: a new upload belongs on the last page.
      if (filter === 'pending' && page < Number(pagerBox.firstChild?.dataset.totalPages || 1)) return;
      listEl.querySelector('[data-testid="reviews-empty"]')?.remove();
      const el = row({ ...d, review_status: 'pending' });
      // Pending rows come first (under "all", the reviewed ones follow them).
      const firstReviewed = listEl.querySelector('[data-testid="review-row"]:not([data-status="pending"])');
      listEl.insertBefore(el, firstReviewed);
      flash(el);
      toast(`新小票待审核：${fmtMoney(d.amount)}`, 'info');
    } else {
      settle(d.upload_id, d.status);
    }
  }

  renderSeg();
  load();

  return {
    reload: () => load({ merge: true }),
    onQueue,
    visible(on) {
      clearInterval(pollTimer);
      // A slow safety net beside the live events (e.g. an older server).
      if (on) pollTimer = setInterval(() => { if (document.visibilityState === 'visible') load({ merge: true }); }, 30_000);
    },
    destroy() { clearInterval(pollTimer); clearTimeout(countTimer); lightbox.remove(); },
  };
}
