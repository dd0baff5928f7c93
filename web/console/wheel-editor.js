// Wheel settings: the 8 prizes and their odds, validated as you type, with a
// preview of the published odds; and cost / pity threshold / daily limit.
// Probabilities are handled as integer ten-thousandths end to end (typed
// text → integer → text), never as floats; the request carries them as JSON
// numbers with exactly four places.
import { h, fill, showMsg, toast } from '../shared/ui.js';
import { oddsPie } from './chart.js';

export const ANGLES = [0, 45, 90, 135, 180, 225, 270, 315];
const TYPES = [['points', '积分'], ['coupon', '优惠券'], ['physical', '实物'], ['empty', '未中奖']];
const TYPE_TEXT = Object.fromEntries(TYPES);

/** "0.035" / "0.0350" / "1" → 350 / 350 / 10000; null when not a probability with ≤ 4 places. */
export function parseWeight(text) {
  const m = /^(\d+)(?:\.(\d{1,4}))?$/.exec(String(text).trim());
  if (!m) return null;
  const w = Number(m[1]) * 10000 + Number((m[2] || '').padEnd(4, '0'));
  return w <= 10000 ? w : null;
}
/** 350 → "0.0350". */
export function weightText(w) {
  return `${Math.floor(w / 10000)}.${String(w % 10000).padStart(4, '0')}`;
}
/** A probability from the server (a JSON number) → ten-thousandths: one rounding, at the door. */
export const weightOf = (p) => Math.round(Number(p) * 10000);
/** 350 → "3.50%". */
export const percentText = (w) => `${Math.floor(w / 100)}.${String(w % 100).padStart(2, '0')}%`;

/** "12.5" → "12.50" (money, two places); null when invalid. */
function moneyText(text) {
  const m = /^(\d{1,8})(?:\.(\d{1,2}))?$/.exec(String(text).trim());
  return m ? `${m[1]}.${(m[2] || '').padEnd(2, '0')}` : null;
}

/**
 * The rules the server enforces, checked as the merchant types. Returns
 * `{issues: [{index?, field?, text}], sum}` (sum in ten-thousandths).
 */
export function validateWheel(rows) {
  const issues = [];
  const add = (text, index, field) => issues.push({ text, index, field });
  if (rows.length !== 8) add(`转盘必须正好 8 个奖品（现在 ${rows.length} 个）`);
  const seen = new Map();
  rows.forEach((r, i) => {
    const a = Number(r.angle);
    if (!ANGLES.includes(a)) add(`第 ${i + 1} 行：角度必须是 0、45、…、315 之一`, i, 'angle');
    else if (seen.has(a)) add(`角度 ${a}° 被第 ${seen.get(a) + 1} 行和第 ${i + 1} 行重复使用`, i, 'angle');
    else seen.set(a, i);
  });
  const missing = ANGLES.filter((a) => !seen.has(a));
  if (rows.length === 8 && missing.length) add(`缺少角度：${missing.map((a) => `${a}°`).join('、')}`);
  let sum = 0;
  rows.forEach((r, i) => {
    const n = `第 ${i + 1} 行（${r.angle}°）`;
    if (!r.prize_name.trim()) add(`${n}：奖品名称不能为空`, i, 'prize_name');
    else if ([...r.prize_name.trim()].length > 20) add(`${n}：奖品名称最多 20 个字`, i, 'prize_name');
    if (!TYPE_TEXT[r.prize_type]) add(`${n}：类型无效`, i, 'prize_type');
    if (moneyText(r.prize_value) === null) add(`${n}：奖品价值须为最多两位小数的非负数`, i, 'prize_value');
    else if (r.prize_type === 'points' && !/^\d+(\.0{1,2})?$/.test(r.prize_value.trim())) add(`${n}：积分奖品的价值须为整数积分`, i, 'prize_value');
    else if (r.prize_type === 'points' && Number(r.prize_value) > 100000) add(`${n}：积分奖品最多 100000 积分`, i, 'prize_value');
    else if (r.prize_type !== 'points' && Number(r.prize_value) > 10000) add(`${n}：奖品价值最多 10000.00`, i, 'prize_value');
    if (!/^#[0-9a-fA-F]{6}$/.test(r.color)) add(`${n}：颜色须为 #RRGGBB`, i, 'color');
    const w = parseWeight(r.probability);
    if (w === null) add(`${n}：概率须为 0–1 之间、最多四位小数的数`, i, 'probability');
    else sum += w;
    if (r.stock.trim() !== '' && !(/^\d+$/.test(r.stock.trim()) && Number(r.stock) <= 1000000)) add(`${n}：库存留空表示不限，否则须为 0–1000000 的整数`, i, 'stock');
    if (r.prize_type === 'empty' && r.is_valuable) add(`${n}：「未中奖」不能设为贵重奖品`, i, 'is_valuable');
  });
  if (sum !== 10000) {
    const diff = 10000 - sum;
    add(`概率合计必须正好为 1.0000，现在是 ${weightText(Math.max(0, sum))}（${diff > 0 ? '还差' : '超出'} ${weightText(Math.abs(diff))}）`, undefined, 'sum');
  }
  const unlimited = (r) => r.stock.trim() === '';
  if (!rows.some((r) => r.prize_type === 'empty' && unlimited(r))) add('至少需要一个不限库存的「未中奖」奖品（库存用完的奖品会由它代替）');
  if (!rows.some((r) => r.is_valuable && r.prize_type !== 'empty' && unlimited(r))) add('至少需要一个不限库存的贵重奖品（保底必须总能兑现）');
  return { issues, sum };
}

/** JSON with decimals written exactly (four places for odds, two for money). */
function rawJson(value) {
  const text = JSON.stringify(value, (_k, v) => (v && typeof v === 'object' && 'raw' in v && Object.keys(v).length === 1 ? `@@RAW:${v.raw}@@` : v));
  return text.replace(/"@@RAW:([0-9.]+)@@"/g, '$1');
}

export function wheelSection(panel, ctx) {
  const { api } = ctx;
  let rows = [];
  let loadedVersion = null;

  /* ---------- settings ---------- */
  // The server's bounds (protocol/README.md, "Lottery settings").
  const RANGES = { cost_points: [10, 10000, '每次消耗积分'], pity_threshold: [1, 100, '保底阈值'], daily_limit: [0, 1000, '每日次数上限'] };
  const num = (id, key, testid) => h('input', {
    id, class: 'input num', type: 'number', min: RANGES[key][0], max: RANGES[key][1], step: 1, inputmode: 'numeric', 'data-testid': testid,
  });
  const sf = {
    cost_points: num('ws-cost', 'cost_points', 'settings-cost'),
    pity_threshold: num('ws-pity', 'pity_threshold', 'settings-pity'),
    daily_limit: num('ws-daily', 'daily_limit', 'settings-daily'),
  };
  const sIssues = h('ul', { class: 'issues', 'data-testid': 'settings-issues' });
  const sErr = h('div', { class: 'msg', 'data-testid': 'settings-error', hidden: true });
  const sVersion = h('span', { class: 'tiny', 'data-testid': 'wheel-version' });
  const sSave = h('button', { type: 'submit', class: 'btn btn-primary', 'data-testid': 'settings-save' }, '保存设置');
  let settings = null;
  const sForm = h('form', { class: 'stack', novalidate: true, 'data-testid': 'settings-form' },
    h('div', { class: 'form-grid cols-3' },
      h('div', { class: 'field' }, h('label', { for: 'ws-cost' }, '每次消耗积分'), sf.cost_points, h('div', { class: 'help' }, '10–10000')),
      h('div', { class: 'field' }, h('label', { for: 'ws-pity' }, '保底阈值（连续未中贵重奖次数）'), sf.pity_threshold, h('div', { class: 'help' }, '1–100')),
      h('div', { class: 'field' }, h('label', { for: 'ws-daily' }, '每人每日次数上限'), sf.daily_limit, h('div', { class: 'help' }, '0 表示不限，最多 1000'))),
    sIssues, sErr,
    h('div', { class: 'row-between' }, sVersion, sSave));

  function checkSettings() {
    const out = [];
    for (const [k, el] of Object.entries(sf)) {
      const [lo, hi, label] = RANGES[k];
      const v = el.value.trim();
      const ok = /^\d+$/.test(v) && Number(v) >= lo && Number(v) <= hi;
      el.setAttribute('aria-invalid', String(!ok));
      if (!ok) out.push(`${label}须为 ${lo}–${hi} 的整数`);
    }
    fill(sIssues, out.map((t) => h('li', { 'data-testid': 'settings-issue' }, t)));
    return out;
  }
  for (const el of Object.values(sf)) el.addEventListener('input', checkSettings);

  sForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    showMsg(sErr, null);
    checkSettings();
    const body = {};
    for (const [k, el] of Object.entries(sf)) {
      const v = el.value.trim();
      if (v !== '' && (!settings || String(settings[k]) !== v)) body[k] = Number(v);
    }
    if (!Object.keys(body).length) { toast('没有需要保存的修改', 'info'); return; }
    sSave.disabled = true;
    try {
      settings = await api.put('/api/merchant/lottery/settings', body);
      fillSettings();
      toast('转盘设置已保存', 'ok');
      showMsg(sErr, '已保存，各服务实例将在 10 秒内生效', 'ok');
    } catch (e2) {
      showMsg(sErr, e2);
    } finally {
      sSave.disabled = false;
    }
  });

  function fillSettings() {
    for (const [k, el] of Object.entries(sf)) el.value = settings?.[k] ?? '';
    sVersion.textContent = settings ? `配置版本 v${settings.version}` : '';
    checkSettings();
  }

  async function loadSettings() {
    try {
      settings = await api.get('/api/merchant/lottery/settings');
      fillSettings();
      showMsg(sErr, null);
    } catch (e) {
      showMsg(sErr, e);
    }
  }

  /* ---------- prizes ---------- */
  const tbody = h('tbody', { 'data-testid': 'prize-list' });
  const issuesEl = h('ul', { class: 'issues', 'data-testid': 'wheel-issues' });
  const sumEl = h('div', { class: 'prob-sum', 'data-testid': 'prob-sum' });
  const pErr = h('div', { class: 'msg', 'data-testid': 'prizes-error', hidden: true });
  const pSave = h('button', { type: 'button', class: 'btn btn-primary', 'data-testid': 'prizes-save' }, '保存奖品与概率');
  const pReset = h('button', { type: 'button', class: 'btn btn-ghost', 'data-testid': 'prizes-reset' }, '撤销修改');
  const tableWrap = h('div', { class: 'table-wrap' },
    h('table', { class: 'table stackable prize-table' },
      h('thead', {}, h('tr', {},
        h('th', {}, '角度'), h('th', {}, '名称'), h('th', {}, '类型'), h('th', {}, '价值'), h('th', {}, '颜色'),
        h('th', {}, '概率'), h('th', {}, '库存'), h('th', {}, '贵重'), h('th', {}, '活动'))),
      tbody));
  const editor = h('div', { class: 'stack', 'data-testid': 'prize-editor' },
    tableWrap,
    sumEl, issuesEl, pErr,
    h('div', { class: 'row row-end' }, pReset, pSave));
  const previewBox = h('div', { class: 'odds-preview', 'data-testid': 'odds-preview' });
  const previewNote = h('div', { class: 'tiny' }, '按上表（未保存的修改也会显示）计算，顾客在转盘页看到同样的公示概率。');

  panel.append(
    h('div', { class: 'wheel-layout' },
      h('div', { class: 'card wheel-prizes' },
        h('div', { class: 'card-head' }, h('div', {}, h('h2', {}, '奖品与概率'), h('div', { class: 'card-sub' }, '8 个奖品，位于 0°、45°、…、315°；概率四位小数，合计正好 1.0000'))),
        editor),
      h('div', { class: 'card wheel-preview' }, h('div', { class: 'card-head' }, h('h2', {}, '概率预览')), previewBox, previewNote),
      h('div', { class: 'card wheel-rules' }, h('div', { class: 'card-head' }, h('h2', {}, '抽奖规则')), sForm)));

  function cell(label, input, cls = '') {
    return h('td', { 'data-label': label, class: cls }, input);
  }

  function renderRows() {
    fill(tbody, rows.map((r, i) => {
      const upd = (field, get) => (e) => { rows[i][field] = get(e.target); refresh(); };
      const angle = h('select', { class: 'input input-sm', 'aria-label': `第 ${i + 1} 行角度`, 'data-testid': 'prize-angle', 'data-field': 'angle', onchange: upd('angle', (t) => Number(t.value)) },
        ANGLES.map((a) => h('option', { value: a, selected: a === Number(r.angle) }, `${a}°`)));
      const name = h('input', { class: 'input input-sm', value: r.prize_name, 'aria-label': `第 ${i + 1} 行名称`, 'data-testid': 'prize-name', 'data-field': 'prize_name', oninput: upd('prize_name', (t) => t.value) });
      const type = h('select', { class: 'input input-sm', 'aria-label': `第 ${i + 1} 行类型`, 'data-testid': 'prize-type', 'data-field': 'prize_type', onchange: upd('prize_type', (t) => t.value) },
        TYPES.map(([v, t]) => h('option', { value: v, selected: v === r.prize_type }, t)));
      const value = h('input', { class: 'input input-sm num', value: r.prize_value, inputmode: 'decimal', 'aria-label': `第 ${i + 1} 行价值`, 'data-testid': 'prize-value', 'data-field': 'prize_value', oninput: upd('prize_value', (t) => t.value) });
      const color = h('input', { class: 'color-input', type: 'color', value: r.color, 'aria-label': `第 ${i + 1} 行颜色`, 'data-testid': 'prize-color', 'data-field': 'color', oninput: upd('color', (t) => t.value) });
      const prob = h('input', {
        class: 'input input-sm num', value: r.probability, inputmode: 'decimal', placeholder: '0.0000', 'aria-label': `第 ${i + 1} 行概率`, 'data-testid': 'prize-probability', 'data-field': 'probability',
        oninput: upd('probability', (t) => t.value),
        onblur: (e) => { const w = parseWeight(e.target.value); if (w !== null) { e.target.value = weightText(w); rows[i].probability = e.target.value; refresh(); } },
      });
      const stock = h('input', { class: 'input input-sm num', value: r.stock, inputmode: 'numeric', placeholder: '不限', 'aria-label': `第 ${i + 1} 行库存（留空不限）`, 'data-testid': 'prize-stock', 'data-field': 'stock', oninput: upd('stock', (t) => t.value) });
      const valuable = h('input', { type: 'checkbox', checked: r.is_valuable, 'aria-label': `第 ${i + 1} 行贵重奖品`, 'data-testid': 'prize-valuable', 'data-field': 'is_valuable', onchange: upd('is_valuable', (t) => t.checked) });
      const activity = h('input', { type: 'checkbox', checked: r.is_activity, 'aria-label': `第 ${i + 1} 行活动奖品`, 'data-testid': 'prize-activity', 'data-field': 'is_activity', onchange: upd('is_activity', (t) => t.checked) });
      return h('tr', { 'data-testid': 'prize-row', 'data-index': i, 'data-prize-id': r.prize_id ?? '' },
        cell('角度', angle), cell('名称', name, 'cell-wide'), cell('类型', type), cell('价值', value, 'cell-narrow'), cell('颜色', color),
        cell('概率', prob, 'cell-narrow'), cell('库存', stock, 'cell-narrow'),
        cell('贵重', h('label', { class: 'check' }, valuable)), cell('活动', h('label', { class: 'check' }, activity)));
    }));
    refresh();
  }

  /** Re-validates, marks bad inputs, redraws the preview. */
  function refresh() {
    const { issues, sum } = validateWheel(rows);
    for (const inp of tbody.querySelectorAll('[data-field]')) inp.setAttribute('aria-invalid', 'false');
    for (const is of issues) {
      if (is.index === undefined || !is.field) continue;
      const inp = tbody.querySelector(`tr[data-index="${is.index}"] [data-field="${is.field}"]`);
      inp?.setAttribute('aria-invalid', 'true');
    }
    if (issues.some((i) => i.field === 'sum')) for (const inp of tbody.querySelectorAll('[data-field="probability"]')) inp.setAttribute('aria-invalid', 'true');
    sumEl.dataset.weight = String(sum);
    sumEl.dataset.ok = String(sum === 10000);
    fill(sumEl, '概率合计 ', h('strong', { class: 'num' }, weightText(Math.max(0, sum))), sum === 10000 ? ' ✓' : ' ≠ 1.0000');
    fill(issuesEl, issues.map((i) => h('li', { 'data-testid': 'wheel-issue' }, i.text)));
    issuesEl.dataset.count = String(issues.length);
    pSave.title = issues.length ? '有未通过的校验，服务器会拒绝并说明原因' : '';
    drawPreview();
  }

  function drawPreview() {
    const slices = [...rows].sort((a, b) => Number(a.angle) - Number(b.angle)).map((r) => {
      const w = parseWeight(r.probability) ?? 0;
      return { name: r.prize_name, color: /^#[0-9a-fA-F]{6}$/.test(r.color) ? r.color : '#ccc', weight: w, label: percentText(w) };
    });
    fill(previewBox,
      h('div', { class: 'pie-wrap' }, oddsPie(slices, { size: 200, title: '奖品概率分布' })),
      h('ul', { class: 'legend' }, slices.map((s) => h('li', { 'data-testid': 'odds-item' },
        h('span', { class: 'swatch', style: `background:${s.color}` }), h('span', { class: 'legend-name' }, s.name || '（未命名）'), h('span', { class: 'num' }, s.label)))));
  }

  function toRows(prizes) {
    return [...prizes].sort((a, b) => a.angle - b.angle).map((p) => ({
      prize_id: p.prize_id,
      prize_name: p.prize_name ?? '',
      prize_type: p.prize_type ?? 'empty',
      prize_value: moneyText(String(p.prize_value ?? '0')) ?? String(Number(p.prize_value ?? 0).toFixed(2)),
      angle: p.angle,
      color: p.color ?? '#cccccc',
      probability: weightText(weightOf(p.probability)),
      is_activity: !!p.is_activity,
      is_valuable: !!p.is_valuable,
      stock: p.stock === null || p.stock === undefined ? '' : String(p.stock),
    }));
  }

  let loaded = [];
  async function loadPrizes() {
    showMsg(pErr, null);
    try {
      const d = await api.get('/api/merchant/lottery/prizes');
      loaded = d.prizes || [];
      loadedVersion = d.version ?? null;
      rows = toRows(loaded);
      tableWrap.hidden = false;
      sumEl.hidden = false;
      pSave.disabled = false;
      pReset.disabled = false;
      renderRows();
    } catch (e) {
      // Without the editor's endpoint, show its refusal and what guests see now.
      showMsg(pErr, e);
      fill(tbody);
      issuesEl.replaceChildren();
      sumEl.replaceChildren();
      tableWrap.hidden = true;
      sumEl.hidden = true;
      pSave.disabled = true;
      pReset.disabled = true;
      try {
        const cfg = await api.get('/api/lottery/config');
        rows = toRows(cfg.prizes || []);
        drawPreview();
        previewNote.textContent = '奖品编辑接口不可用，此处显示顾客当前看到的公示概率。';
      } catch { /* nothing more to show */ }
    }
  }

  pReset.addEventListener('click', () => { rows = toRows(loaded); renderRows(); showMsg(pErr, null); });

  pSave.addEventListener('click', async () => {
    showMsg(pErr, null);
    // Send what is typed; the server is the judge and its reason is shown as sent.
    const prizes = rows.map((r) => {
      const w = parseWeight(r.probability);
      const money = moneyText(r.prize_value);
      const p = {
        prize_name: r.prize_name.trim(),
        prize_type: r.prize_type,
        prize_value: money !== null ? { raw: money } : r.prize_value,
        angle: Number(r.angle),
        color: r.color,
        probability: w !== null ? { raw: weightText(w) } : r.probability,
        is_activity: r.is_activity,
        is_valuable: r.is_valuable,
        stock: r.stock.trim() === '' ? null : (/^\d+$/.test(r.stock.trim()) ? Number(r.stock.trim()) : r.stock),
      };
      if (r.prize_id !== undefined && r.prize_id !== null) return { prize_id: r.prize_id, ...p };
      return p;
    });
    pSave.disabled = true;
    try {
      const d = await api.request('/api/merchant/lottery/prizes', { method: 'PUT', raw: rawJson({ prizes }) });
      loaded = d.prizes || loaded;
      loadedVersion = d.version ?? loadedVersion;
      rows = toRows(loaded);
      renderRows();
      showMsg(pErr, `已保存（配置版本 v${loadedVersion ?? '—'}），各服务实例将在 10 秒内使用新转盘`, 'ok');
      toast('奖品与概率已保存', 'ok');
      loadSettings();
    } catch (e) {
      showMsg(pErr, e);
    } finally {
      pSave.disabled = false;
    }
  });

  let started = false;
  return {
    visible(on) {
      if (on && !started) { started = true; loadPrizes(); loadSettings(); }
    },
    reload() { loadPrizes(); loadSettings(); },
  };
}

