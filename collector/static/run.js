// The run page: a virtualised waterfall (only visible rows are in the DOM, so a 10,000-step
// run draws as fast as a 10-step one), details on click, SDK spans, events, live updates.
const $ = (id) => document.getElementById(id);
const ROW = 22;
let runId = null, data = null, span = 1, timer = null;

async function start() {
  const parts = location.pathname.split('/').filter(Boolean);
  try {
    runId = parts[0] === 'traces' ? (await resolveIdent(parts[1])).split('/').pop() : decodeURIComponent(parts[1]);
    if (parts[0] === 'traces') history.replaceState(null, '', '/runs/' + encodeURIComponent(runId));
    await load();
  } catch (e) { $('error').textContent = e.status === 404 ? `No run "${parts[1]}" in this collector.` : 'Cannot load the run: ' + e.message; }
}

async function load() {
  data = await api(`/api/runs/${encodeURIComponent(runId)}/waterfall`);
  const r = data.run;
  document.title = `${shortName(r.workflowName)} · ${r.status}`;
  $('title').textContent = shortName(r.workflowName);
  $('status').innerHTML = badge(r.status);
  const live = r.status === 'running' || r.status === 'pending';
  $('live').innerHTML = live ? '<span class="live"></span>live' : '';
  $('meta').innerHTML = [['Workflow', r.workflowName], ['Run id', r.runId], ['Trace id', r.traceId], ['Started', fmtTime(r.startedAt)],
    ['Duration', fmtMs(r.durationMs)], ['Steps', r.steps], ['Errors', r.errors], ['Benign conflicts', r.benignConflicts]]
    .map(([k, v]) => `<div><span>${k}</span><b class="${k === 'Run id' || k === 'Trace id' ? 'mono' : ''}">${esc(v ?? '–')}</b></div>`).join('');
  $('sentry').innerHTML = data.sentryDropped.length ? `<div class="panel" style="margin-bottom:12px"><b>Sentry events dropped as benign</b>
    ${data.sentryDropped.map((d) => `<div><span class="badge benign">${esc(d.rule)}</span> ×${d.count} <span class="dim">${esc(d.lastMessage)}</span></div>`).join('')}</div>` : '';
  let end = 1;
  for (const x of data.rows) end = Math.max(end, x.s + x.d);
  for (const x of data.sdk) end = Math.max(end, x.s + x.d);
  span = end;
  drawAxis();
  drawRows();
  drawSdk();
  if (!window.__wftRenderedAt) window.__wftRenderedAt = performance.now();  // for bench/: first full draw
  $('events-summary').textContent = `Events (${data.eventsCount})`;
  clearTimeout(timer);
  if (live) timer = setTimeout(() => load().catch(() => {}), 1000);
}

function drawAxis() {
  const ticks = [];
  for (let i = 0; i <= 5; i++) ticks.push(`<span style="left:${i * 20}%">${fmtMs((span * i) / 5)}</span>`);
  $('axis').innerHTML = ticks.join('');
}

const pct = (ms) => (100 * ms) / span;

function rowHtml(x, i) {
  const cls = x.status === 2 ? ' error' : x.benign ? ' benign' : '';
  let bars = `<div class="bar ${x.kind}${cls}" data-span="${x.id}" data-trace="${x.trace}" style="left:${pct(x.s)}%;width:${Math.max(pct(x.d), 0.1)}%"
      title="${esc(x.name)} · ${fmtMs(x.d)}"></div>`;
  for (const g of x.segments) bars += `<div class="bar seg${g.status === 2 ? ' error' : ''}" data-span="${g.id}" data-trace="${x.trace}"
      style="left:${pct(g.s)}%;width:${Math.max(pct(g.d), 0.1)}%" title="attempt ${g.n} · ${fmtMs(g.d)}"></div>`;
  for (const m of x.marks || []) bars += `<div class="mark" style="left:${pct(m.t)}%" title="${esc(m.name)}"></div>`;
  const note = x.kind === 'step' && x.attempts > 1 ? ` <span class="dim">×${x.attempts}</span>` : '';
  const right = pct(x.s + x.d);
  const dur = `<span class="dur" style="${right > 85 ? `right:${100 - pct(x.s) + 0.5}%` : `left:${right + 0.5}%`}">${fmtMs(x.d)}</span>`;
  return `<div class="row" style="top:${i * ROW}px" data-row="${i}"><div class="label ${x.kind}" title="${esc(x.name)}" data-span="${x.id}" data-trace="${x.trace}">${esc(x.name)}${note}
    ${x.benign ? ' <span class="badge benign">benign</span>' : ''}</div><div class="lane">${bars}${dur}</div></div>`;
}

function drawRows() {
  const wf = $('wf'), inner = $('wf-inner');
  inner.style.height = Math.max(data.rows.length, 1) * ROW + 'px';
  const first = Math.max(0, Math.floor(wf.scrollTop / ROW) - 20);
  const last = Math.min(data.rows.length, first + Math.ceil((wf.clientHeight || 600) / ROW) + 40);
  let html = '';
  for (let i = first; i < last; i++) html += rowHtml(data.rows[i], i);
  inner.innerHTML = html || '<div class="empty">No spans for this run yet.</div>';
}

function drawSdk() {
  $('sdk-summary').textContent = `SDK spans (${data.sdk.length})`;
  if (!$('sdk-box').open) return;
  $('sdk').innerHTML = data.sdk.slice(0, 5000).map((x) => `<div style="padding-left:${x.depth * 12}px">
    <a href="#" data-span="${x.id}" data-trace="${x.trace}" class="${x.status === 2 ? 'err' : ''}">${esc(x.name)}</a>
    <span class="dim">${fmtMs(x.d)}</span>${x.benign ? ' <span class="badge benign">benign</span>' : ''}</div>`).join('');
}

async function showDetail(trace, spanId) {
  const s = await api(`/api/spans/${trace}/${spanId}`);
  const a = s.attributes;
  const pretty = (v) => { try { return JSON.stringify(JSON.parse(v), null, 2); } catch { return String(v); } };
  const payloads = ['workflow.input', 'workflow.output', 'step.input', 'step.output', 'workflow.hook.metadata']
    .filter((k) => a[k] !== undefined).map((k) => `<div class="dim">${k}</div><pre>${esc(pretty(a[k]))}</pre>`).join('');
  const errors = s.events.filter((e) => e.name === 'exception').map((e) => `<div class="err exception">${esc(e.attributes['exception.type'])}: ${esc(e.attributes['exception.message'])}</div>
    ${e.attributes['exception.stacktrace'] ? `<pre>${esc(e.attributes['exception.stacktrace'])}</pre>` : ''}`).join('');
  const receipts = s.events.filter((e) => e.name === 'hook_received').map((e) => `<div class="dim">received ${fmtTime(new Date(e.time_ns / 1e6).toISOString())}</div>
    <pre>${esc(pretty(e.attributes['workflow.hook.payload'] ?? ''))}</pre>`).join('');
  const ids = [['span', s.spanId], ['trace', s.traceId], ['step', a['step.id']], ['attempt', a['step.attempt']], ['status', s.status.code === 2 ? 'ERROR' : s.benign ? 'benign conflict' : 'ok'],
    ['started', new Date(s.startTimeUnixNano / 1e6).toISOString()], ['duration', fmtMs(s.durationMs)], ['retry delay', a['step.retry.delay_ms'] != null ? fmtMs(a['step.retry.delay_ms']) : null],
    ['resume at', a['workflow.wait.resume_at']], ['token', a['workflow.hook.token']], ['original', a['workflow.original_status']]].filter(([, v]) => v != null && v !== '');
  $('detail').innerHTML = `<b class="detail-name">${esc(s.name)}</b><div class="kv mono" style="margin:8px 0">${ids.map(([k, v]) => `<span>${k}</span><span>${esc(v)}</span>`).join('')}</div>
    ${errors}${receipts}${payloads}`;
}

async function loadEvents(cursor) {
  const page = await api(`/api/runs/${encodeURIComponent(runId)}/events?limit=500` + (cursor ? '&cursor=' + encodeURIComponent(cursor) : ''));
  $('events').insertAdjacentHTML('beforeend', page.data.map((e) => `<tr><td class="mono">${esc(e.eventId)}</td><td>${esc(e.eventType)}</td>
    <td class="mono">${esc(e.correlationId || '')}</td><td>${esc(fmtTime(e.createdAt))}</td></tr>`).join(''));
  $('events-more').innerHTML = page.hasMore ? '<button id="ev-more">Load more</button>' : '';
  if (page.hasMore) $('ev-more').onclick = () => loadEvents(page.cursor);
}

document.addEventListener('click', (e) => {
  const el = e.target.closest('[data-span]');
  if (!el) return;
  e.preventDefault();
  showDetail(el.dataset.trace, el.dataset.span).catch((err) => { $('detail').textContent = err.message; });
});
$('wf').addEventListener('scroll', () => requestAnimationFrame(drawRows));
$('sdk-box').addEventListener('toggle', drawSdk);
$('events-box').addEventListener('toggle', () => { if ($('events-box').open && !$('events').children.length) loadEvents(null); });
start();
