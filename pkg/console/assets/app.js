// cardmeter's console: a page per hash route, each reading the public API
// with the signed-in token. No page loads more than it shows: lists are
// paged by the server, charts read ClickHouse's rollups.

const DEFAULT_ZONE = 'Asia/Shanghai'; // DOMAIN.md: a plan that names none
const PAGE = 50;

const state = { token: sessionStorage.getItem('cardmeter.token') || '', me: null, timer: null };

// ---- the API ----

class APIError extends Error {
  constructor(status, body) {
    super(body && body.title ? body.title + (body.detail ? ': ' + body.detail : '') : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, opts = {}) {
  const headers = { Accept: 'application/json', ...(opts.headers || {}) };
  if (state.token) headers.Authorization = 'Bearer ' + state.token;
  if (opts.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(opts.json);
  }
  const r = await fetch(path, { method: opts.method || 'GET', headers, body: opts.body });
  let body = null;
  try { body = await r.json(); } catch { /* not JSON */ }
  if (r.status === 401 && !opts.signingIn) {
    signOut('The token was refused: sign in again.');
  }
  if (!r.ok) throw new APIError(r.status, body);
  return body;
}

// ---- DOM ----

function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat()) {
    if (kid === undefined || kid === null || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

const main = () => document.getElementById('main');

const cardHref = iccid => '#/card/' + encodeURIComponent(iccid);

// randomKey is an Idempotency-Key: one per press of a button, so that a
// retried request is the same command (crypto.randomUUID needs a secure
// context; the console may be served over plain HTTP)
function randomKey() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return 'console-' + Array.from(b, x => x.toString(16).padStart(2, '0')).join('');
}

// show puts render g's page in place, unless a later render began (see
// render).
function show(g, ...nodes) {
  if (!current(g)) return;
  main().replaceChildren(...nodes.flat().filter(n => n !== null && n !== undefined && n !== false));
}

function table(headers, rows, opts = {}) {
  return h('table', { id: opts.id },
    h('thead', null, h('tr', null, headers.map(c => h('th', { class: c.num ? 'num' : null }, c.label ?? c)))),
    h('tbody', null, rows.length ? rows : h('tr', null, h('td', { colspan: headers.length, class: 'muted' }, opts.empty || 'none'))));
}

function failure(err) {
  if (err instanceof APIError && err.status === 501) return h('p', { class: 'muted' }, 'Not available: this API has no ClickHouse to read.');
  return h('p', { class: 'error' }, err.message);
}

// ---- formats ----

function fmtTime(iso, zone) {
  if (!iso) return '—';
  const d = typeof iso === 'number' ? new Date(iso * 1000) : new Date(iso);
  if (isNaN(d) || d.getTime() <= 0) return '—';
  const opts = { year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', hourCycle: 'h23', timeZoneName: 'short' };
  try {
    return new Intl.DateTimeFormat('en-CA', { ...opts, timeZone: zone || DEFAULT_ZONE }).format(d);
  } catch {
    return new Intl.DateTimeFormat('en-CA', { ...opts, timeZone: 'UTC' }).format(d); // a zone this browser does not know
  }
}

function fmtBytes(n) {
  if (n === undefined || n === null) return '—';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0, v = Number(n);
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return (i ? v.toFixed(v < 10 ? 2 : 1) : v) + ' ' + units[i];
}

const fmtFen = fen => (fen < 0 ? '−' : '') + '¥' + (Math.abs(fen) / 100).toFixed(2);
const pct = (a, b) => (b > 0 ? Math.round((100 * a) / b) : 0);

const REASONS = {
  manual: 'stopped by an operator',
  over_quota: 'over its quota this cycle: resumes at the next cycle',
  arrears: 'the account is in arrears: resumes by hand after a payment',
  expiry: "the plan's validity has ended: a renewal resumes it",
  pool: "its pool's quota is used up: resumes at the pool's next cycle",
  device_mismatch: 'used in another device than its own: an operator rebinds or resumes it',
  anomaly: 'unusual usage in a day: an operator resumes it',
};
const reasonWords = r => REASONS[r] || r;

// a refused command's code in words (as the API's refusals say it)
const REFUSALS = {
  'plan-expired': "the card's plan has expired: renew it first",
  'in-arrears': 'the account is in arrears: a payment must bring the balance to zero first',
  'over-quota': 'the card (or its pool) is over quota: it resumes at the next cycle',
  cancelled: 'the card is cancelled',
};

const STATUS = { in_service: 'in service', stopped: 'stopped', cancelled: 'cancelled' };
const statusBadge = s => h('span', { class: 'badge ' + s, 'data-status': s }, STATUS[s] || s);

// ---- routing ----

function route() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [pathPart, query] = raw.split('?');
  const parts = pathPart.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query || '') };
}

function go(path) { location.hash = '#/' + path; }

const pages = {
  '': home, fleet: fleetPage, cards: cardsPage, card: cardPage, account: accountPage,
  rejections: rejectionsPage, pipeline: pipelinePage, record: recordPage, cause: causePage, search: searchPage,
};

// Each render has a generation: a page whose reads come back after the
// user moved on (or signed out) shows nothing and starts no timer.
let gen = 0;
const current = g => g === gen && state.me !== null;

async function render() {
  const g = ++gen;
  clearInterval(state.timer);
  state.timer = null;
  if (!state.me) return;
  show(g, h('p', { class: 'muted' }, 'Loading…'));
  try {
    const { parts, params } = route();
    const page = pages[parts[0] || ''] || notFound;
    markNav(parts[0] || '');
    await page(parts.slice(1), params, g);
  } catch (err) {
    if (current(g)) show(g, failure(err));
  }
}

function notFound(_, __, g) { show(g, h('h1', null, 'Not found'), h('p', null, h('a', { href: '#/' }, 'Home'))); }

function markNav(name) {
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === name);
}

// ---- sign-in ----

async function signIn(token) {
  state.token = token;
  try {
    state.me = await api('/v1/whoami', { signingIn: true });
  } catch (err) {
    state.token = '';
    state.me = null;
    throw err;
  }
  if (token) sessionStorage.setItem('cardmeter.token', token);
  document.getElementById('signin-page').hidden = true;
  document.getElementById('top').hidden = false;
  document.getElementById('main').hidden = false;
  document.getElementById('who').textContent = state.me.open ? 'open API (no tokens)' : 'signed in as ' + state.me.name;
  document.getElementById('signout').hidden = state.me.open;
  buildNav();
  render();
}

function signOut(message) {
  sessionStorage.removeItem('cardmeter.token');
  state.token = '';
  state.me = null;
  clearInterval(state.timer);
  gen++; // what is still loading shows nothing
  main().replaceChildren();
  document.getElementById('top').hidden = true;
  document.getElementById('main').hidden = true;
  document.getElementById('signin-page').hidden = false;
  document.getElementById('signin-error').textContent = message || '';
  document.getElementById('token').value = '';
}

const readsAll = () => state.me.read;
const mayOperate = account => state.me.operator || state.me.operator_accounts.includes(account);
const mayResubmit = carrier => state.me.admin || state.me.carriers.includes(carrier);

function buildNav() {
  const links = [];
  if (readsAll()) links.push(['fleet', 'Fleet'], ['cards', 'Cards']);
  for (const a of state.me.read_accounts) links.push(['account/' + a, 'Account ' + a]);
  if (readsAll() || state.me.read_accounts.length) links.push(['rejections', 'Rejections']);
  if (readsAll()) links.push(['pipeline', 'Pipeline']);
  document.getElementById('nav').replaceChildren(...links.map(([p, label]) =>
    h('a', { href: '#/' + p, 'data-page': p.split('/')[0] }, label)));
}

function home(_, __, g) {
  if (readsAll()) return go('fleet');
  if (state.me.read_accounts.length) return go('account/' + encodeURIComponent(state.me.read_accounts[0]));
  show(g, h('h1', null, 'Nothing to show'), h('p', null, 'This token reads no cards. Its scopes: ' + state.me.scopes.join(', ')));
}

// ---- charts ----

function barChart(el, xs, series, opts = {}) {
  if (!window.uPlot) { el.textContent = 'chart library not loaded'; return; }
  el.dataset.total = series.reduce((n, s) => n + s.values.reduce((a, b) => a + b, 0), 0); // what it draws, for a test to read
  const width = Math.max(300, el.clientWidth || 600);
  const bars = window.uPlot.paths.bars({ size: [0.7, 40] });
  const colors = ['#2b6cb0', '#c0392b', '#1f8a4c', '#b7791f'];
  new window.uPlot({
    width, height: opts.height || 220,
    scales: { x: { time: true } },
    axes: [{}, { values: (u, v) => v.map(opts.fmt || (x => x)), size: 70 }],
    series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: colors[i], fill: colors[i] + '99', paths: bars, points: { show: false } }))],
    tzDate: ts => window.uPlot.tzDate(new Date(ts * 1000), opts.zone || DEFAULT_ZONE),
  }, [xs, ...series.map(s => s.values)], el);
}

// ---- Fleet ----

async function fleetPage(_, __, g) {
  const f = await api('/v1/fleet');
  const tiles = [
    ['in_service', 'in service', f.in_service, 'cards?status=in_service'],
    ['stopped', 'stopped', f.stopped, 'cards?status=stopped'],
    ['cancelled', 'cancelled', f.cancelled, 'cards?status=cancelled'],
  ].map(([k, l, n, href]) => h('a', { class: 'tile', href: '#/' + href, id: 'count-' + k }, h('div', { class: 'n' }, n.toLocaleString()), h('div', { class: 'l' }, l)));
  const reasons = Object.entries(f.by_reason || {}).sort((a, b) => b[1] - a[1]).map(([r, n]) =>
    h('tr', null, h('td', null, h('a', { href: '#/cards?status=stopped&reason=' + r }, r)), h('td', null, reasonWords(r)), h('td', { class: 'num' }, n.toLocaleString())));
  const warnings = Object.entries(f.warnings || {}).sort((a, b) => b[1] - a[1]).map(([w, n]) =>
    h('tr', null, h('td', null, w), h('td', { class: 'num' }, n.toLocaleString())));
  const nearRow = n => h('tr', null,
    h('td', null, h('a', { href: cardHref(n.iccid) }, n.iccid)),
    h('td', null, h('a', { href: '#/account/' + encodeURIComponent(n.account_id) }, n.account_id)),
    h('td', { class: 'num' }, fmtBytes(n.usage_bytes) + ' / ' + fmtBytes(n.quota_bytes)),
    h('td', { class: 'num' }, pct(n.usage_bytes, n.quota_bytes) + '%'),
    h('td', null, n.run_out_at ? fmtTime(n.run_out_at) : fmtTime(n.cycle_end)));
  const chart = h('div', { class: 'chart', id: 'stops-chart' });
  show(g,
    h('h1', null, 'Fleet'),
    h('div', { class: 'grid' }, tiles),
    f.missing && f.missing.length ? h('p', { class: 'error' }, `Partitions ${f.missing.join(', ')} are restoring: their cards are not counted yet.`) : null,
    h('p', { class: 'muted' }, 'As of ' + fmtTime(f.at) + ' (the census of each partition, taken every 15 s).'),
    h('div', { class: 'cols' },
      h('div', null, h('h2', null, 'Stopped cards by reason'), table(['reason', 'meaning', { label: 'cards', num: true }], reasons, { id: 'by-reason' })),
      h('div', null, h('h2', null, 'Active warnings'), table(['warning', { label: 'cards', num: true }], warnings, { id: 'warnings' }))),
    h('h2', null, 'Stops and resumes per hour, last 3 days'), h('div', { class: 'panel' }, chart),
    h('div', { class: 'cols' },
      h('div', null, h('h2', null, 'Closest to their quota'), table(['card', 'account', { label: 'used', num: true }, { label: '', num: true }, 'cycle ends'], (f.nearest || []).map(nearRow), { id: 'nearest' })),
      h('div', null, h('h2', null, 'Quota runs out before the cycle ends (forecast)'), table(['card', 'account', { label: 'used', num: true }, { label: '', num: true }, 'runs out'], (f.run_out || []).map(nearRow), { id: 'run-out' }))),
  );
  try {
    const s = await api('/v1/fleet/stops?hours=72');
    const since = Math.floor(new Date(s.since).getTime() / 3600000) * 3600;
    const xs = [], stopped = [], resumed = [];
    for (let i = 0; i <= s.hours; i++) { xs.push(since + i * 3600); stopped.push(0); resumed.push(0); }
    for (const row of s.per_hour) {
      const i = Math.round((new Date(row.hour).getTime() / 1000 - since) / 3600);
      if (i < 0 || i >= xs.length) continue;
      (row.kind === 'stopped' ? stopped : resumed)[i] += row.count;
    }
    barChart(chart, xs, [{ label: 'stops', values: stopped }, { label: 'resumes', values: resumed }]);
  } catch (err) {
    chart.replaceChildren(failure(err));
  }
}

// ---- card lists (server-paged) ----

function cardRows(cards) {
  return cards.map(c => h('tr', null,
    h('td', null, h('a', { href: cardHref(c.iccid) }, c.iccid)),
    h('td', null, statusBadge(c.status)),
    h('td', null, (c.stop_reasons || []).join(', ')),
    h('td', null, h('a', { href: '#/account/' + encodeURIComponent(c.account_id) }, c.account_id)),
    h('td', null, c.plan_id),
    h('td', { class: 'num' }, fmtBytes(c.cycle.usage_bytes) + ' / ' + fmtBytes(c.cycle.quota_bytes)),
    h('td', null, (c.active_warnings || []).join(', '))));
}

// cardList is a filtered, server-paged list of cards: filters go in the
// route's query, the cursor stack lets it page back.
function cardList(base, params, fixed = {}) {
  const box = h('div', { id: 'card-list' });
  const status = params.get('status') || '', reason = params.get('reason') || '';
  const cursors = (params.get('cursors') || '').split(',').filter(Boolean);
  const link = (p) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(p)) if (v) q.set(k, v);
    return '#/' + base + (q.toString() ? '?' + q : '');
  };
  const sel = (name, options, value) => h('select', { id: 'filter-' + name, onchange: e => {
    location.hash = link({ status, reason, [name]: e.target.value });
  } }, options.map(([v, l]) => { const o = h('option', { value: v }, l); if (v === value) o.selected = true; return o; }));
  box.append(h('div', { class: 'filters' },
    'Status', sel('status', [['', 'any'], ['in_service', 'in service'], ['stopped', 'stopped'], ['cancelled', 'cancelled']], status),
    'Stop reason', sel('reason', [['', 'any'], ...Object.keys(REASONS).map(r => [r, r])], reason)));
  const q = new URLSearchParams({ limit: PAGE });
  if (status) q.set('status', status);
  if (reason) q.set('reason', reason);
  for (const [k, v] of Object.entries(fixed)) q.set(k, v);
  if (cursors.length) q.set('cursor', cursors[cursors.length - 1]);
  const body = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
  box.append(body);
  api('/v1/cards?' + q).then(page => {
    const pager = h('div', { class: 'pager' },
      cursors.length ? h('a', { href: link({ status, reason, cursors: cursors.slice(0, -1).join(',') }), id: 'prev-page' }, '← previous') : null,
      page.next_cursor ? h('a', { href: link({ status, reason, cursors: [...cursors, page.next_cursor].join(',') }), id: 'next-page' }, 'next →') : null);
    body.replaceChildren(table(['card', 'status', 'stop reasons', 'account', 'plan', { label: 'this cycle', num: true }, 'warnings'],
      cardRows(page.cards || []), { id: 'cards', empty: 'no cards match' }), pager);
  }, err => body.replaceChildren(failure(err)));
  return box;
}

async function cardsPage(_, params, g) {
  show(g, h('h1', null, 'Cards'), cardList('cards', params));
}

// ---- Card ----

function describe(ev) {
  const d = ev.data || {};
  const t = ev.type.replace(/^cardmeter\./, '').replace(/\.v\d+$/, '');
  switch (t) {
    case 'card.provisioned': return `provisioned on plan ${d.plan_id}` + (d.carrier ? ` (${d.carrier})` : '');
    case 'card.stopped': return `stopped: ${reasonWords(d.reason)}` + (d.reason === 'over_quota' ? ` (${fmtBytes(d.overshoot_bytes)} over)` : '') + (d.operator ? ` by ${d.operator}` : '') + (d.note ? ` — “${d.note}”` : '');
    case 'card.stop_cleared': return `${d.reason} cleared; still stopped for ${(d.stop_reasons || []).join(', ')}`;
    case 'card.resumed': return `resumed (${d.reason} cleared)` + (d.operator ? ` by ${d.operator}` : '');
    case 'card.command_refused': return `${/stop/.test(d.detail) ? 'stop' : /resume/.test(d.detail) ? 'resume' : 'command'} refused: ${REFUSALS[d.code] || d.code}` + (d.operator ? ` (asked by ${d.operator})` : '');
    case 'account.charged': return `charged ${fmtFen(d.amount_fen)} (${d.detail}); balance ${fmtFen(d.balance_fen)}`;
    case 'card.warning': return `warning ${d.warning}` + (d.expected_at ? `: quota runs out about ${fmtTime(d.expected_at, state.zone)}` : '');
    case 'card.warning_resolved': return `warning ${d.warning} resolved`;
    case 'card.cycle_closed': return `cycle closed at ${fmtBytes(d.usage_bytes)}`;
    case 'card.renewed': return `renewed until ${fmtTime(d.valid_until, state.zone)}`;
    case 'card.cancelled': return 'cancelled';
    case 'card.actuation_succeeded': return `carrier confirmed ${d.action}`;
    case 'card.actuation_failed': return `carrier call failed: ${d.action} (${d.detail || ''})`;
    case 'card.resync_requested': return `resync: ${d.action} (${d.detail || ''})`;
    case 'card.imei_changed': return `used in another device: ${d.imei} (bound to ${d.bound_imei || 'none'})`;
    case 'card.usage_anomaly': return `unusual usage on ${d.day}: ${fmtBytes(d.day_bytes)} (its usual day: ${fmtBytes(d.median_bytes)})`;
    case 'card.rebound': return `rebound to device ${d.imei}` + (d.operator ? ` by ${d.operator}` : '') + (d.note ? ` — “${d.note}”` : '');
  }
  return t + (d.reason ? ': ' + d.reason : '');
}

function causeLink(cause, card, ids, at) {
  if (!cause) return null;
  const [kind, rest] = [cause.slice(0, cause.indexOf(':')), cause.slice(cause.indexOf(':') + 1)];
  if (kind === 'record') {
    const [carrier, ...id] = rest.split('/');
    return h('a', { href: `#/record/${encodeURIComponent(card.iccid)}/${encodeURIComponent(carrier)}/${encodeURIComponent(id.join('/'))}`, class: 'cause' }, 'record ' + rest);
  }
  if (kind === 'tick') return h('span', { class: 'cause muted' }, 'the clock at ' + fmtTime(Number(rest), state.zone));
  if (kind === 'event' && ids.has(rest)) return h('a', { href: '#ev-' + rest, class: 'cause', onclick: e => { e.preventDefault(); document.getElementById('ev-' + rest)?.scrollIntoView(); } }, 'event ' + rest);
  if (kind === 'event') return h('a', { href: `#/cause/${encodeURIComponent(card.account_id)}/${encodeURIComponent(rest)}?at=${encodeURIComponent(at || '')}`, class: 'cause' }, (rest.startsWith('cmd-') ? 'command ' : 'event ') + rest);
  return h('span', { class: 'cause' }, cause);
}

async function cardPage([iccid], _, g) {
  const [c, hist] = await Promise.all([api('/v1/cards/' + encodeURIComponent(iccid)), api('/v1/cards/' + encodeURIComponent(iccid) + '/events')]);
  const zone = c.time_zone || DEFAULT_ZONE;
  state.zone = zone;
  const cy = c.cycle;
  const start = Date.parse(cy.start) / 1000, end = Date.parse(cy.end) / 1000, now = Date.parse(c.log_time) / 1000;
  const used = pct(cy.usage_bytes, cy.quota_bytes);
  let forecast = null;
  if (now > start && cy.usage_bytes > 0 && cy.quota_bytes > 0 && c.status === 'in_service') {
    forecast = Math.round(cy.usage_bytes * (end - start) / (now - start));
  }
  const fill = h('div', { class: 'fill' + (cy.usage_bytes > cy.quota_bytes ? ' over' : '') });
  fill.style.width = Math.min(100, used) + '%';
  const bar = h('div', { class: 'bar', id: 'usage-bar', title: `${used}% of the quota` }, fill);
  if (forecast !== null && cy.quota_bytes > 0) {
    const marker = h('div', { class: 'forecast', title: 'forecast at the cycle end' });
    marker.style.left = Math.min(100, pct(forecast, cy.quota_bytes)) + '%';
    bar.append(marker);
  }
  const refusal = h('p', { id: 'refusal', class: 'refusal', role: 'alert' });
  const operator = h('input', { id: 'operator', value: state.me.open ? 'console' : state.me.name, 'aria-label': 'who asks' });
  const note = h('input', { id: 'note', placeholder: 'why (recorded)', 'aria-label': 'note' });
  const act = kind => async () => {
    refusal.textContent = '';
    try {
      await api(`/v1/cards/${encodeURIComponent(iccid)}/${kind}`, { method: 'POST', json: { operator: operator.value, note: note.value }, headers: { 'Idempotency-Key': randomKey() } });
      render();
    } catch (err) {
      refusal.textContent = (kind === 'stop' ? 'Stop' : 'Resume') + ' refused: ' + (err.status === 409 && err.body?.detail ? err.body.detail : err.message);
    }
  };
  const imei = h('input', { id: 'imei', placeholder: 'IMEI (15 digits)', inputmode: 'numeric', maxlength: 15, 'aria-label': 'IMEI' });
  const rebind = async () => {
    refusal.textContent = '';
    try {
      await api(`/v1/cards/${encodeURIComponent(iccid)}/rebind`, { method: 'POST', json: { imei: imei.value.trim(), operator: operator.value, note: note.value }, headers: { 'Idempotency-Key': randomKey() } });
      render();
    } catch (err) {
      refusal.textContent = 'Rebind refused: ' + (err.status === 409 && err.body?.detail ? err.body.detail : err.message);
    }
  };
  const ids = new Set(hist.events.map(e => e.id));
  const events = hist.events.slice().reverse().map(ev => h('li', { id: 'ev-' + ev.id, 'data-type': ev.type },
    h('span', { class: 't' }, fmtTime(ev.time, zone)), describe(ev), ' ', causeLink(ev.data?.cause, c, ids, ev.time)));
  const chart = h('div', { class: 'chart', id: 'daily-chart' });
  show(g,
    h('h1', null, 'Card ', h('span', { id: 'iccid' }, c.iccid), ' ', statusBadge(c.status)),
    c.stop_reasons.length ? h('ul', { id: 'reasons' }, c.stop_reasons.map(r => h('li', { 'data-reason': r }, h('b', null, r), ': ', reasonWords(r)))) : h('p', { id: 'reasons', class: 'muted' }, c.status === 'in_service' ? 'In service: no stop reason.' : ''),
    h('div', { class: 'cols' },
      h('div', { class: 'panel' },
        h('h2', null, 'This cycle'),
        h('div', null, `${fmtBytes(cy.usage_bytes)} of ${fmtBytes(cy.quota_bytes)} (${used}%)`, cy.overshoot_bytes ? h('span', { class: 'error' }, ` — ${fmtBytes(cy.overshoot_bytes)} over`) : null),
        bar,
        h('div', { class: 'muted', id: 'forecast' }, forecast !== null ? `At this cycle's rate so far: about ${fmtBytes(forecast)} by its end (${pct(forecast, cy.quota_bytes)}% of the quota).` : c.status === 'in_service' ? 'No forecast yet.' : 'No forecast: the card is ' + STATUS[c.status] + '.'),
        h('dl', { class: 'kv' },
          h('dt', null, 'cycle'), h('dd', null, `${fmtTime(cy.start, zone)} → ${fmtTime(cy.end, zone)}`),
          h('dt', null, 'quota renews'), h('dd', { id: 'renews' }, fmtTime(cy.end, zone)),
          h('dt', null, 'plan valid'), h('dd', { id: 'validity' }, `${fmtTime(c.valid_from, zone)} → ${c.valid_until ? fmtTime(c.valid_until, zone) : 'no end'}`),
          c.expired_at ? [h('dt', null, 'expired'), h('dd', { id: 'expired' }, fmtTime(c.expired_at, zone) + (c.cancel_at ? `; cancelled at ${fmtTime(c.cancel_at, zone)} unless renewed first` : ''))] : null,
          h('dt', null, 'time zone'), h('dd', null, zone),
          h('dt', null, 'warnings'), h('dd', null, c.active_warnings.join(', ') || 'none'))),
      h('div', { class: 'panel' },
        h('h2', null, 'Card'),
        h('dl', { class: 'kv' },
          h('dt', null, 'account'), h('dd', null, h('a', { href: '#/account/' + encodeURIComponent(c.account_id), id: 'account-link' }, c.account_id)),
          c.account ? [h('dt', null, 'balance'), h('dd', null, fmtFen(c.account.balance_fen) + (c.account.in_arrears ? ' (in arrears)' : ''))] : null,
          h('dt', null, 'plan'), h('dd', null, c.plan_id),
          c.pool_id ? [h('dt', null, 'pool'), h('dd', null, c.pool_id)] : null,
          h('dt', null, 'carrier'), h('dd', null, c.carrier),
          h('dt', null, 'device'), h('dd', { id: 'device' }, c.device?.imei ? `bound to ${c.device.imei}` + (c.device.last_imei && c.device.last_imei !== c.device.imei ? `; last seen in ${c.device.last_imei}` : '')
            : c.device?.last_imei ? `not bound; last seen in ${c.device.last_imei}` : 'not bound' + (c.device?.bind_first_seen ? ' (binds to the first device seen)' : '')),
          h('dt', null, 'auto stop over quota'), h('dd', null, c.auto_stop_over_quota ? 'yes' : 'no'),
          h('dt', null, 'log time'), h('dd', null, fmtTime(c.log_time, zone))),
        mayOperate(c.account_id) ? h('div', { class: 'actions' }, operator, note,
          h('button', { id: 'stop', type: 'button', onclick: act('stop') }, 'Stop'),
          h('button', { id: 'resume', type: 'button', onclick: act('resume') }, 'Resume')) : null,
        mayOperate(c.account_id) && c.status !== 'cancelled' ? h('div', { class: 'actions' }, imei,
          h('button', { id: 'rebind', type: 'button', onclick: rebind }, 'Rebind to this device')) : null,
        refusal)),
    h('h2', null, 'Daily usage, this cycle and the last (days of Asia/Shanghai, from ClickHouse)'), h('div', { class: 'panel' }, chart),
    h('h2', null, 'Timeline (newest first)'), h('ul', { class: 'timeline', id: 'timeline' }, events));
  try {
    const daily = await api(`/v1/cards/${encodeURIComponent(iccid)}/usage/daily?days=62`);
    // every day of the window, those without usage at zero (days of Shanghai, as the rollups)
    const byDay = new Map(daily.days.map(d => [d.day, d.bytes_up + d.bytes_down]));
    const last = Math.floor((now + 8 * 3600) / 86400) * 86400 - 8 * 3600;
    const xs = [], ys = [];
    for (let i = 61; i >= 0; i--) {
      const t = last - i * 86400;
      xs.push(t);
      ys.push(byDay.get(new Date((t + 8 * 3600) * 1000).toISOString().slice(0, 10)) || 0);
    }
    if (!daily.days.length) chart.replaceChildren(h('p', { class: 'muted' }, 'No usage in ClickHouse for these days yet.'));
    else barChart(chart, xs, [{ label: 'usage', values: ys }], { fmt: fmtBytes, zone: DEFAULT_ZONE });
  } catch (err) {
    chart.replaceChildren(failure(err));
  }
}

async function recordPage([iccid, carrier, id], _, g) {
  const r = await api(`/v1/cards/${encodeURIComponent(iccid)}/records/${encodeURIComponent(carrier)}/${encodeURIComponent(id)}`);
  show(g, h('h1', null, `Record ${carrier}/${id}`),
    h('p', null, 'of card ', h('a', { href: cardHref(iccid) }, iccid), ' (as counted, from ClickHouse)'),
    h('dl', { class: 'kv panel', id: 'record' }, ...Object.entries(r).flatMap(([k, v]) => [h('dt', null, k), h('dd', null, /_time$|_at$/.test(k) ? `${fmtTime(v, state.zone)} (${v})` : String(v))])));
}

async function causePage([account, id], params, g) {
  const at = params.get('at');
  const c = await api(`/v1/accounts/${encodeURIComponent(account)}/causes/${encodeURIComponent(id)}` + (at ? '?at=' + encodeURIComponent(at) : ''));
  const row = e => h('tr', null, h('td', null, fmtTime(e.time)), h('td', null, e.type.replace(/^cardmeter\./, '')),
    h('td', null, e.iccid ? h('a', { href: cardHref(e.iccid) }, e.iccid) : '—'),
    h('td', null, [e.reason, e.operator && 'by ' + e.operator, e.note && '“' + e.note + '”', e.detail, e.amount_fen ? fmtFen(e.amount_fen) : null].filter(Boolean).join(' · ')));
  show(g, h('h1', null, (c.event ? 'Event ' : 'Input ') + id),
    h('p', null, 'Account ', h('a', { href: '#/account/' + encodeURIComponent(account) }, account)),
    c.event ? table(['time', 'type', 'card', 'detail'], [row(c.event)]) : h('p', { class: 'muted' }, 'An input (a command, payment or provisioning) written to the log; what it caused:'),
    h('h2', null, 'What it caused'), table(['time', 'type', 'card', 'detail'], c.caused.map(row), { id: 'caused' }),
    c.truncated ? h('p', { class: 'muted' }, 'The first 1,000 only.') : null);
}

// ---- Account ----

async function accountPage([id], params, g) {
  const a = await api('/v1/accounts/' + encodeURIComponent(id));
  const ledger = h('div', { id: 'ledger' }, h('p', { class: 'muted' }, 'Loading…'));
  const pools = a.pools.map(p => h('tr', null, h('td', null, p.pool_id), h('td', { class: 'num' }, fmtBytes(p.usage_bytes) + ' / ' + fmtBytes(p.quota_bytes)),
    h('td', null, `${fmtTime(p.cycle.start, p.time_zone)} → ${fmtTime(p.cycle.end, p.time_zone)}`), h('td', null, p.exhausted ? h('span', { class: 'badge bad' }, 'used up') : 'ok'), h('td', { class: 'num' }, p.cards)));
  show(g,
    h('h1', null, 'Account ', a.account_id, ' ', a.in_arrears ? h('span', { class: 'badge bad', id: 'arrears' }, 'in arrears') : h('span', { class: 'badge ok' }, 'in good standing')),
    h('div', { class: 'grid' },
      h('div', { class: 'tile' }, h('div', { class: 'n', id: 'balance' }, fmtFen(a.balance_fen)), h('div', { class: 'l' }, 'balance')),
      h('div', { class: 'tile' }, h('div', { class: 'n' }, fmtFen(a.credit_limit_fen)), h('div', { class: 'l' }, 'credit limit')),
      h('div', { class: 'tile' }, h('div', { class: 'n' }, fmtFen(a.low_balance_fen)), h('div', { class: 'l' }, 'warns below')),
      ...['in_service', 'stopped', 'cancelled'].map(s => h('a', { class: 'tile', href: `#/account/${encodeURIComponent(id)}?status=${s}` }, h('div', { class: 'n' }, (a.cards[s] || 0).toLocaleString()), h('div', { class: 'l' }, STATUS[s])))),
    h('p', { class: 'muted' }, (a.auto_resume_on_payment ? 'Cards resume on payment by themselves.' : 'Cards stopped for arrears resume by hand after a payment.') + (a.active_warnings.length ? ' Warnings: ' + a.active_warnings.join(', ') : '')),
    a.pools.length ? [h('h2', null, 'Pools'), table(['pool', { label: 'used', num: true }, 'cycle', 'state', { label: 'cards', num: true }], pools)] : null,
    h('h2', null, 'Cards'), cardList('account/' + encodeURIComponent(id), params, { account_id: id }),
    h('h2', null, 'Payments and charges, last 93 days (from ClickHouse)'), ledger);
  try {
    const l = await api(`/v1/accounts/${encodeURIComponent(id)}/ledger`);
    ledger.replaceChildren(table(['time', 'kind', { label: 'amount', num: true }, 'reason', 'card'], l.entries.map(e => h('tr', null,
      h('td', null, fmtTime(e.time)), h('td', null, e.kind), h('td', { class: 'num' }, (e.kind === 'charge' ? '−' : '+') + fmtFen(e.amount_fen)),
      h('td', null, e.reason), h('td', null, e.iccid ? h('a', { href: cardHref(e.iccid) }, e.iccid) : '—'))), { id: 'ledger-table', empty: 'no payments or charges in these days' }));
  } catch (err) {
    ledger.replaceChildren(failure(err));
  }
}

// ---- Rejections ----

async function rejectionsPage(_, params, g) {
  const carrier = params.get('carrier') || '', field = params.get('field') || '', since = params.get('since') || '';
  const pending = params.get('pending') !== 'false';
  const afters = (params.get('afters') || '').split(',').filter(Boolean);
  const link = p => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries({ carrier, field, since, pending: pending ? '' : 'false', ...p })) if (v) q.set(k, v);
    return '#/rejections' + (q.toString() ? '?' + q : '');
  };
  const q = new URLSearchParams({ limit: PAGE });
  if (carrier) q.set('carrier', carrier);
  if (field) q.set('field', field);
  if (since) q.set('since', since);
  if (pending) q.set('pending', 'true');
  if (afters.length) q.set('after', afters[afters.length - 1]);
  const [summary, page] = await Promise.all([api('/v1/rejections/summary'), api('/v1/rejections?' + q)]);
  const result = h('p', { id: 'resubmit-result', role: 'status' });
  const resubmit = async (c, body) => {
    result.textContent = 'Re-submitting…';
    try {
      const r = await api('/v1/rejections/resubmit?carrier=' + encodeURIComponent(c), { method: 'POST', json: body });
      result.textContent = `Re-submitted: ${r.accepted} accepted, ${r.duplicates} already counted, ${r.still_rejected.length} still rejected` +
        (r.still_rejected.length ? ' (' + r.still_rejected.map(e => `${e.record_id || 'line ' + e.line}: ${e.field} ${e.reason}`).slice(0, 5).join('; ') + ')' : '') + '.';
      setTimeout(render, 1500);
    } catch (err) {
      result.textContent = 'Not re-submitted: ' + err.message;
    }
  };
  const boxes = [];
  const rows = page.rejections.map(v => {
    const box = mayResubmit(v.carrier) && v.record && !v.resubmitted ? h('input', { type: 'checkbox', value: v.id, 'data-carrier': v.carrier }) : null;
    if (box) boxes.push(box);
    return h('tr', { 'data-id': v.id },
      h('td', null, box),
      h('td', null, fmtTime(v.received_at)), h('td', null, v.carrier),
      h('td', null, v.record ? (v.record.iccid ? h('a', { href: cardHref(v.record.iccid) }, v.record.record_id) : v.record.record_id) : `line ${v.error?.line ?? '?'}`),
      h('td', null, v.error?.field || 'record'), h('td', null, v.error?.reason || ''),
      h('td', null, v.resubmitted ? 'as ' + v.resubmitted : (box ? h('button', { type: 'button', class: 'resubmit-one', onclick: () => resubmit(v.carrier, { ids: [v.id] }) }, 'Re-submit') : '')));
  });
  const selected = () => boxes.filter(b => b.checked);
  show(g,
    h('h1', null, 'Rejected records'),
    h('h2', null, 'Last 24 hours by carrier and field'),
    table(['carrier', 'field', { label: 'rejected', num: true }, { label: 'not re-submitted', num: true }], summary.counts.map(c => h('tr', null,
      h('td', null, h('a', { href: link({ carrier: c.carrier, field: '', since: summary.since, afters: '' }) }, c.carrier)),
      h('td', null, h('a', { href: link({ carrier: c.carrier, field: c.field, since: summary.since, afters: '' }) }, c.field)),
      h('td', { class: 'num' }, c.total.toLocaleString()), h('td', { class: 'num' }, c.pending.toLocaleString()))), { id: 'rejection-summary', empty: 'no rejections in the last day' }),
    summary.complete ? null : h('p', { class: 'muted' }, 'Counted from the first million entries only.'),
    h('h2', null, 'Records'),
    h('div', { class: 'filters' },
      carrier ? h('span', null, 'carrier ', h('b', null, carrier), ' ', h('a', { href: link({ carrier: '', afters: '' }) }, '×')) : null,
      field ? h('span', null, 'field ', h('b', null, field), ' ', h('a', { href: link({ field: '', afters: '' }) }, '×')) : null,
      since ? h('span', null, 'since ', h('b', null, fmtTime(since)), ' ', h('a', { href: link({ since: '', afters: '' }) }, '×')) : null,
      h('a', { href: link({ pending: pending ? 'false' : '', afters: '' }) }, pending ? 'show re-submitted too' : 'only those not re-submitted'),
      boxes.length ? h('button', { type: 'button', id: 'resubmit-selected', onclick: () => {
        const by = {};
        for (const b of selected()) (by[b.dataset.carrier] ||= []).push(b.value);
        for (const [c, ids] of Object.entries(by)) resubmit(c, { ids });
      } }, 'Re-submit selected') : null,
      carrier && mayResubmit(carrier) ? h('button', { type: 'button', id: 'resubmit-all', onclick: () => resubmit(carrier, { all: true }) }, `Re-submit all of ${carrier}`) : null),
    result,
    table(['', 'received', 'carrier', 'record', 'field', 'why', ''], rows, { id: 'rejections', empty: 'no rejected records' }),
    h('div', { class: 'pager' },
      afters.length ? h('a', { href: link({ afters: afters.slice(0, -1).join(',') }) }, '← previous') : null,
      page.next_after ? h('a', { href: link({ afters: [...afters, page.next_after].join(',') }), id: 'next-page' }, 'next →') : null));
}

// ---- Pipeline ----

async function pipelinePage(_, __, g) {
  const draw = async () => {
    const s = await api('/v1/status');
    const num = (v, f = x => x.toLocaleString()) => (v === null || v === undefined ? 'unknown' : f(v));
    const rows = s.partitions.map(p => h('tr', null,
      h('td', { class: 'num' }, p.partition), h('td', null, p.owner || '—'),
      h('td', null, p.ready ? h('span', { class: 'badge ok' }, 'ready') : h('span', { class: 'badge bad' }, p.owner ? 'restoring' : 'unowned')),
      h('td', { class: 'num' }, p.cards ?? '—'), h('td', { class: 'num' }, (p.lag_messages ?? 0).toLocaleString()),
      h('td', { class: 'num' }, (p.lag_seconds ?? 0).toFixed(1) + ' s'),
      h('td', { class: 'num' }, p.checkpoint_age_seconds === undefined ? '—' : Math.round(p.checkpoint_age_seconds) + ' s ago'),
      h('td', { class: 'error' }, p.error || '')));
    show(g,
      h('h1', null, 'Pipeline ', h('span', { class: 'badge ' + (s.healthy ? 'ok' : 'bad'), id: 'healthy' }, s.healthy ? 'healthy' : 'needs a look')),
      s.problems.length ? h('ul', { id: 'problems', class: 'error' }, s.problems.map(p => h('li', null, p))) : null,
      h('div', { class: 'grid' },
        [['projector lag', num(s.projector_lag_messages) + ' msgs'], ['projector lag (time)', num(s.projector_lag_seconds, v => v.toFixed(1) + ' s')],
          ['sink backlog', num(s.sink_pending_messages) + ' msgs'], ['ClickHouse', s.clickhouse_up === null ? 'unknown' : s.clickhouse_up ? 'up' : 'DOWN'],
          ['ingest', num(s.ingest_records_per_second, v => v.toFixed(1)) + ' records/s'], ['rejections', num(s.rejected_records_per_second, v => v.toFixed(1)) + ' records/s']]
          .map(([l, n]) => h('div', { class: 'tile' }, h('div', { class: 'n' }, n), h('div', { class: 'l' }, l)))),
      h('h2', null, 'Partitions'),
      table([{ label: 'partition', num: true }, 'projector', 'state', { label: 'cards', num: true }, { label: 'lag', num: true }, { label: 'oldest waiting', num: true }, { label: 'last snapshot', num: true }, ''], rows, { id: 'partitions' }),
      h('h2', null, 'Processes'),
      table(['role', 'instance', 'state', 'reported'], s.instances.map(i => h('tr', null, h('td', null, i.role), h('td', null, i.instance),
        h('td', null, i.ready ? 'ready' : h('span', { class: 'error' }, i.detail || 'not ready')), h('td', null, fmtTime(i.at))))),
      h('p', { class: 'muted' }, 'Refreshes every 5 s. As of ' + fmtTime(s.at) + '.'));
  };
  await draw();
  if (current(g)) state.timer = setInterval(() => draw().catch(() => {}), 5000);
}

// ---- Search ----

async function searchPage([q], _, g) {
  const r = await api('/v1/search?q=' + encodeURIComponent(q));
  if (r.matches.length === 1) {
    if (current(g)) location.replace(cardHref(r.matches[0].iccid));
    return;
  }
  show(g, h('h1', null, 'Search: ', q),
    r.matches.length ? table(['card', 'account', 'carrier', 'matched by'], r.matches.map(m => h('tr', null,
      h('td', null, h('a', { href: cardHref(m.iccid) }, m.iccid)), h('td', null, m.account_id), h('td', null, m.carrier), h('td', null, m.matched))), { id: 'matches' })
      : h('p', { id: 'no-match' }, 'No card has this ICCID, IMSI or MSISDN.'));
}

// ---- start ----

document.getElementById('signin-form').addEventListener('submit', async e => {
  e.preventDefault();
  const err = document.getElementById('signin-error');
  err.textContent = '';
  try {
    await signIn(document.getElementById('token').value.trim());
  } catch (x) {
    err.textContent = x.status === 401 ? 'That token is not known.' : x.message;
  }
});
document.getElementById('signout').addEventListener('click', () => {
  history.replaceState(null, '', '#/'); // the next token starts at its own home
  signOut();
});
document.getElementById('search-form').addEventListener('submit', e => {
  e.preventDefault();
  const q = document.getElementById('search').value.replace(/[\s+]/g, '');
  if (q) go('search/' + encodeURIComponent(q));
});
window.addEventListener('hashchange', render);

signIn(state.token).catch(() => signOut(state.token ? 'The token was refused: sign in again.' : ''));
