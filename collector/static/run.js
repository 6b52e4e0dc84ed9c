// The run page: why it failed (at the top, no click needed), what a live run waits on and for how
// long, a virtualised waterfall (only visible rows are in the DOM, so a 10,000-step run draws as fast
// as a 10-step one) with the SDK's own spans on the same time axis, details on click, events.
const $ = (id) => document.getElementById(id);
const ROW = 22;
const LABEL = 260; // px: the label column (style.css .wf .label, .axis-row .sdk-toggle)
let runId = null, data = null, span = 1, timer = null, items = [], fetchedAt = 0;
let showSdk = localStorage.getItem('wft-sdk') !== 'off';

async function start() {
  const parts = location.pathname.split('/').filter(Boolean);
  try {
    runId = parts[0] === 'traces' ? (await resolveIdent(parts[1])).split('/').pop() : decodeURIComponent(parts[1]);
    if (parts[0] === 'traces') history.replaceState(null, '', '/runs/' + encodeURIComponent(runId));
    await load();
  } catch (e) {
    let unreadable = null;
    try { unreadable = e.status === 404 ? JSON.parse(e.message).problems : null; } catch { /* not JSON */ }
    if (unreadable && unreadable.length) { drawProblems(unreadable); return; }
    $('error').textContent = e.status === 404 ? `No run "${parts[1]}" in this collector.` : 'Cannot load the run: ' + e.message;
  }
}

// The world tailer could not read this run (an event record, or an event log that reads empty although
// the run record says it ran): said at the top, since its spans here are missing or incomplete.
function drawProblems(problems) {
  let box = $('problems');
  if (!box) {
    box = document.createElement('div');
    box.id = 'problems';
    $('error').after(box);
  }
  box.innerHTML = problems && problems.length ? `<div class="panel unreadable" style="margin-bottom:12px">
    <b class="err">Could not be read from the world</b> <span class="dim">(its spans here are missing or incomplete)</span>
    ${problems.map((p) => `<div class="mono">${esc(p)}</div>`).join('')}</div>` : '';
}

// The waterfall run.html asked for before this script loaded, once (a reload asks again).
function early(path) {
  const asked = window.__wftEarly;
  window.__wftEarly = undefined;
  return asked && asked.path === path ? asked.response : undefined;
}

async function load() {
  const path = `/api/runs/${encodeURIComponent(runId)}/waterfall`;
  const answer = api(path, early(path));
  if (!data) warmDateFormats();  // the first view: while the server builds the waterfall
  data = await answer;
  fetchedAt = performance.now();
  const r = data.run;
  document.title = `${shortName(r.workflowName)} · ${r.status}`;
  $('title').textContent = shortName(r.workflowName);
  $('status').innerHTML = badge(r.status);
  const live = data.now != null;
  $('live').innerHTML = live ? '<span class="live"></span>live' : '';
  const link = $('trace-link');
  link.hidden = !r.traceUrl;
  if (r.traceUrl) link.href = r.traceUrl;
  $('meta').innerHTML = [['Workflow', r.workflowName], ['Run id', r.runId], ['Trace id', r.traceId], ['Started', fmtTime(r.startedAt)],
    ['Duration', fmtMs(r.durationMs)], ['Steps', r.steps], ['Errors', r.errors], ['Benign conflicts', r.benignConflicts]]
    .map(([k, v]) => `<div><span>${k}</span><b class="${k === 'Run id' || k === 'Trace id' ? 'mono' : ''}">${esc(v ?? '–')}</b></div>`).join('');
  drawProblems(r.problems);
  drawFailure();
  drawNow();
  $('sentry').innerHTML = data.sentryDropped.length ? `<div class="panel" style="margin-bottom:12px"><b>Sentry events dropped as benign</b>
    ${data.sentryDropped.map((d) => `<div><span class="badge benign">${esc(d.rule)}</span> ×${d.count} <span class="dim">${esc(d.lastMessage)}</span></div>`).join('')}</div>` : '';
  let end = 1;
  for (const x of data.rows) end = Math.max(end, x.s + x.d);
  for (const x of data.sdk) end = Math.max(end, x.s + x.d);
  if (live) end = Math.max(end, data.now);
  span = end;
  $('origin').textContent = '0 = ' + fmtClock(data.t0, true);
  $('origin').title = 'the time axis starts at ' + new Date(data.t0 / 1e6).toISOString();
  buildItems();
  drawAxis();
  drawRows();
  if (!window.__wftRenderedAt) window.__wftRenderedAt = performance.now();  // for bench/: first full draw
  // Asked for after the waterfall is drawn: both read every span of the run, and on a 20k-span run the
  // server answering them at once (one interpreter) would hold the waterfall back by the analysis' cost.
  drawAnalysis();
  $('events-summary').textContent = `Events (${data.eventsCount})`;
  clearTimeout(timer);
  if (live) poll();
}

// While live, reload every second; a failed reload (a restart, a blip) tries again instead of stopping.
function poll() {
  clearTimeout(timer);
  timer = setTimeout(() => load().catch(poll), 1000);
}

// ---- why it failed / where it was cancelled: at the top, no click needed -------------------------------
function drawFailure() {
  const f = data.failure;
  if (!f) { $('failure').innerHTML = ''; return; }
  const r = data.run;
  const when = r.completedAt ? ` <span class="dim">at ${esc(fmtTime(r.completedAt))}</span>` : '';
  const ref = (id, trace, text) => id ? `<a href="#" data-span="${esc(id)}" data-trace="${esc(trace)}">${text}</a>` : text;
  let head, where;
  if (f.status === 'cancelled') {
    head = `<b>Cancelled</b>${when}`;
    where = f.step ? `while in step ${ref(f.step.spanId, f.step.traceId, `<b>${esc(f.step.name)}</b>`)}${f.step.attempt ? `, attempt ${f.step.attempt}` : ''}` : '';
  } else {
    head = `<b class="err-type">${esc(f.type || 'Error')}</b>${f.code && f.code !== f.type ? ` <span class="badge code">${esc(f.code)}</span>` : ''}
      <span class="err-msg">${esc(f.message || '(no message)')}</span>${when}`;
    where = f.step ? `in step ${ref(f.step.spanId, f.step.traceId, `<b>${esc(f.step.name)}</b>`)}${f.step.attempt ? `, attempt <b>${f.step.attempt}</b>` : ''}`
      : 'in the workflow function itself (no step failed)';
  }
  $('failure').innerHTML = `<div class="panel failure ${esc(f.status)}"><div class="failure-head">${badge(f.status)} ${head}</div>
    ${where ? `<div class="failure-where">${where}</div>` : ''}
    ${f.stack ? `<details class="stack"><summary>Stack</summary><pre>${esc(f.stack)}</pre></details>` : ''}</div>`;
}

// ---- a live run: now, and what it waits on since when ---------------------------------------------------
const nowNs = () => data.nowNs + (performance.now() - fetchedAt) * 1e6;

function drawNow() {
  if (data.now == null) { $('now').innerHTML = ''; return; }
  const r = data.run, at = nowNs();
  const running = r.startNs != null ? ` · running for ${esc(fmtAge((at - r.startNs) / 1e6))}` : '';
  const waits = r.waitingOn.map((w) => {
    const age = (at - w.sinceNs) / 1e6;
    return `<li class="wait ${esc(w.kind)}${age >= stuckMs() ? ' stuck' : ''}">${esc(fmtWait(w))}
      <span class="dim">since ${esc(fmtClock(w.sinceNs))}, for</span> <span class="age">${esc(fmtAge(age))}</span></li>`;
  }).join('');
  $('now').innerHTML = `<div class="panel now-panel"><div><b>Now</b> ${esc(fmtClock(at))}${running}</div>
    ${waits ? `<div class="dim">Waiting on</div><ul class="waits">${waits}</ul>`
      : '<div class="dim">Waiting on nothing the event log shows yet.</div>'}</div>`;
}

// ---- the waterfall ------------------------------------------------------------------------------------
function buildItems() {
  items = data.rows;
  if (data.sdk.length) items = items.concat([{ header: true }], showSdk ? data.sdk.map((x) => ({ ...x, kind: 'sdk' })) : []);
}

function drawAxis() {
  const ticks = [];
  const nowAtEnd = data.now != null && pct(data.now) > 90;  // a live run's axis ends now: the last tick says so
  for (let i = 0; i <= 5; i++) {
    const text = i === 0 ? '0' : i === 5 && nowAtEnd ? 'now · ' + fmtMs(span) : fmtMs((span * i) / 5);
    ticks.push(`<span class="${i === 0 ? 'first' : i === 5 ? 'last' : ''}${i === 5 && nowAtEnd ? ' now' : ''}" style="left:${i * 20}%">${text}</span>`);
  }
  if (data.now != null && !nowAtEnd) ticks.push(`<span class="now" style="left:${pct(data.now)}%">now</span>`);
  $('axis').innerHTML = ticks.join('');
}

const pct = (ms) => (100 * ms) / span;
// SDK span names carry full workflow and step ids: "STEP step//./workflows/demo//alwaysFatal" reads as "STEP alwaysFatal"
const sdkName = (n) => String(n).replace(/\b(?:workflow|step)\/\/\S*\/\/(\S+)/g, '$1');

// A bar's duration label: after the bar, else inside its right end (a long bar), else before it.
function durHtml(x, text) {
  const right = pct(x.s + x.d);
  const where = right <= 85 ? `left:${right + 0.5}%` : pct(x.d) > 12 ? `right:${100 - right + 0.5}%` : `right:${100 - pct(x.s) + 0.5}%`;
  return `<span class="dur${right > 85 && pct(x.d) > 12 ? ' inside' : ''}" style="${where}">${esc(text)}</span>`;
}

function gapHtml(from, to, text, cls) {
  const w = Math.max(pct(to - from), 0.1);
  return `<div class="gap${cls}" style="left:${pct(from)}%;width:${w}%" title="${esc(text)}"><span>${esc(text)}</span></div>`;
}

function rowHtml(x, i) {
  if (x.header) {
    return `<div class="row sep" style="top:${i * ROW}px"><div class="label"><label><input type="checkbox" class="sdk-check" ${showSdk ? 'checked' : ''}>
      SDK spans (${data.sdk.length})</label></div><div class="lane"></div></div>`;
  }
  if (x.kind === 'sdk') {
    const cls = x.status === 2 ? ' error' : x.benign ? ' benign' : '';
    const ref = `data-span="${esc(x.id)}" data-trace="${esc(x.trace)}"`;
    return `<div class="row sdk" style="top:${i * ROW}px"><div class="label sdk" style="padding-left:${6 + x.depth * 10}px" title="${esc(x.name)}" ${ref}>${esc(sdkName(x.name))}</div>
      <div class="lane"><div class="bar sdk${cls}" ${ref} style="left:${pct(x.s)}%;width:${Math.max(pct(x.d), 0.1)}%" title="${esc(x.name)} · ${fmtMs(x.d)}"></div>
      ${durHtml(x, fmtMs(x.d))}</div></div>`;
  }
  // open rows: begun, no span yet (the run, a step queued, running or being retried, a hook or sleep waited on)
  const cls = (x.status === 2 ? ' error' : x.benign ? ' benign' : '') + (x.open ? ' open' : '');
  const ref = x.id ? `data-span="${esc(x.id)}" data-trace="${esc(x.trace)}"` : '';
  const title = x.open ? (x.resumeAt ? `${x.name} · until ${fmtTime(x.resumeAt)}` : `${x.name} · ${x.stepStatus || 'open'}`) : `${x.name} · ${fmtMs(x.d)}`;
  let bars = `<div class="bar ${x.kind}${cls}" ${ref} style="left:${pct(x.s)}%;width:${Math.max(pct(x.d), 0.1)}%"
      title="${esc(title)}"></div>`;
  const segs = x.segments.slice().sort((a, b) => a.s - b.s);
  segs.forEach((g, k) => {
    const gref = g.id ? `data-span="${esc(g.id)}" data-trace="${esc(x.trace)}"` : '';
    bars += `<div class="bar seg${g.status === 2 ? ' error' : ''}${g.open ? ' open' : ''}" ${gref}
      style="left:${pct(g.s)}%;width:${Math.max(pct(g.d), 0.1)}%" title="attempt ${g.n ?? '?'} · ${g.open ? 'running' : fmtMs(g.d)}"></div>`;
    if (g.status !== 2) return;
    const next = segs[k + 1], end = g.s + g.d;
    if (next) bars += gapHtml(end, next.s, `retry after ${fmtMs(next.retryMs ?? next.s - end)}`, '');
    else if (x.stepStatus === 'retrying') bars += gapHtml(end, x.s + x.d, x.retryAt ? `retry at ${fmtTime(x.retryAt)}` : 'retry pending', ' pending');
  });
  for (const m of x.marks || []) bars += `<div class="mark" style="left:${pct(m.t)}%" title="${esc(m.name)}"></div>`;
  const state = x.open ? ` <span class="dim">(${esc(x.stepStatus || (x.kind === 'run' ? 'running' : 'waiting'))})</span>` : '';
  const note = (x.kind === 'step' && x.attempts > 1 ? ` <span class="dim">×${x.attempts}</span>` : '') + state;
  const dur = durHtml(x, x.open ? fmtAge(x.d) : fmtMs(x.d));
  return `<div class="row" style="top:${i * ROW}px" data-row="${i}"><div class="label ${x.kind}${x.open ? ' open' : ''}" title="${esc(x.name)}" ${ref}>${esc(x.name)}${note}
    ${x.benign ? ' <span class="badge benign">benign</span>' : ''}</div><div class="lane">${bars}${dur}</div></div>`;
}

function drawRows() {
  const wf = $('wf'), inner = $('wf-inner');
  inner.style.height = Math.max(items.length, 1) * ROW + 'px';
  const first = Math.max(0, Math.floor(wf.scrollTop / ROW) - 20);
  const last = Math.min(items.length, first + Math.ceil((wf.clientHeight || 600) / ROW) + 40);
  let html = '';
  for (let i = first; i < last; i++) html += rowHtml(items[i], i);
  if (data.now != null && items.length) html += `<div class="now-line" style="left:calc(${LABEL}px + (100% - ${LABEL}px) * ${pct(data.now) / 100})" title="now"></div>`;
  inner.innerHTML = html || '<div class="empty">No spans for this run yet.</div>';
}

function setSdk(on) {
  showSdk = on;
  localStorage.setItem('wft-sdk', on ? 'on' : 'off');
  buildItems();
  drawRows();
}

// ---- details ------------------------------------------------------------------------------------------
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

// ---- where the time went (stacked bar) and whether the app's spans match the event log (badge) ----------
// Self-contained: its own box above the run's facts, its own request (/api/runs/{id}/analysis); a failure
// to load it hides the box and leaves the rest of the page alone.
// Drawn in reading order; which part an instant belongs to is the API's to decide (telemetry/timing.py).
const TIME_PARTS = [['queued', 'queued'], ['executing', 'executing'], ['world', 'world calls'], ['workflow', 'workflow function'],
  ['backoff', 'retry backoff'], ['sleeping', 'sleeping'], ['hook', 'waiting on hooks'], ['other', 'other']];
async function drawAnalysis() {
  let box = document.getElementById('analysis');
  if (!box) {
    box = document.createElement('div');
    box.id = 'analysis';
    box.className = 'analysis';
    const anchor = document.getElementById('meta');
    if (anchor && anchor.parentNode) anchor.parentNode.insertBefore(box, anchor); else document.querySelector('main').prepend(box);
  }
  let a;
  try { a = await api(`/api/runs/${encodeURIComponent(runId)}/analysis`); } catch (e) { box.hidden = true; return; }
  box.hidden = false;
  const t = a.timeBreakdown, r = a.reconciliation;
  let html = '<div class="analysis-head"><b>Where the time went</b>';
  if (t) html += ` <span class="dim">${fmtMs(t.durationMs)}${t.live ? ' so far' : ''}${t.appSpans ? '' : ' · event log only (no app spans)'}</span>`;
  html += reconcileBadge(r) + '</div>';
  if (t && t.durationMs > 0) {
    const parts = new Map(t.parts.map((p) => [p.name, p]));
    const share = (p) => (100 * p.ms / t.durationMs);
    const tip = (p, label) => `${label}: ${fmtMs(p.ms)} (${share(p).toFixed(1)}%)` + (p.summedMs > p.ms + 0.5 ? ` · ${fmtMs(p.summedMs)} summed over parallel work` : '');
    html += '<div class="tbar">' + TIME_PARTS.filter(([n]) => parts.get(n) && parts.get(n).ms > 0)
      .map(([n, label]) => `<span class="tseg t-${n}" data-part="${n}" style="width:${share(parts.get(n)).toFixed(3)}%" title="${esc(tip(parts.get(n), label))}"></span>`).join('') + '</div>';
    html += '<div class="tlegend">' + TIME_PARTS.filter(([n]) => parts.get(n) && parts.get(n).ms > 0)
      .map(([n, label]) => `<span title="${esc(tip(parts.get(n), label))}"><i class="t-${n}"></i>${esc(label)} <b>${fmtMs(parts.get(n).ms)}</b></span>`).join('') + '</div>';
  }
  if (r && r.gaps.length) {
    html += `<details class="gaps"><summary>${r.gaps.length} instrumentation gap${r.gaps.length === 1 ? '' : 's'}: the event log and the app's spans disagree</summary><ul>`
      + r.gaps.map((g) => `<li>${esc(g.message)}</li>`).join('') + '</ul></details>';
  }
  box.innerHTML = html;
}
function reconcileBadge(r) {
  if (!r) return '';
  if (!r.instrumented) return ' <span class="badge recon-none" title="the run stored no traceparent and no app span of it arrived">no app spans</span>';
  if (r.gaps.length) return ` <span class="badge recon-gaps" title="steps or attempts in the event log without app spans, or the reverse">${r.gaps.length} gap${r.gaps.length === 1 ? '' : 's'} in app spans</span>`;
  if (r.pending) return ' <span class="badge recon-none" title="spans arrive after the events they describe: judged 30 s after">app spans: checking…</span>';
  return ` <span class="badge recon-ok" title="${r.logAttempts} attempts of ${r.steps} steps in the event log, each with its app span">app spans complete</span>`;
}

document.addEventListener('click', (e) => {
  const el = e.target.closest('[data-span]');
  if (!el) return;
  e.preventDefault();
  showDetail(el.dataset.trace, el.dataset.span).catch((err) => { $('detail').textContent = err.message; });
});
document.addEventListener('change', (e) => { if (e.target.classList.contains('sdk-check')) setSdk(e.target.checked); });
$('wf').addEventListener('scroll', () => requestAnimationFrame(drawRows));
$('events-box').addEventListener('toggle', () => { if ($('events-box').open && !$('events').children.length) loadEvents(null); });
start();
