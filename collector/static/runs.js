// The runs page: filters, search (run id or trace id), live refresh.
const $ = (id) => document.getElementById(id);
const seenWorkflows = new Set();
let limit = 100;

function query() {
  const p = new URLSearchParams({ limit });
  for (const k of ['workflow', 'status']) if ($(k).value) p.set(k, $(k).value);
  for (const k of ['since', 'until']) if ($(k).value) p.set(k, new Date($(k).value).toISOString());
  if ($('stuck').value.trim()) p.set('stuck', $('stuck').value.trim());
  return p;
}

async function refresh() {
  try {
    const page = await api('/api/runs?' + query());
    const nowNs = Date.now() * 1e6;
    $('error').textContent = '';
    drawUnreadable(page.unreadable);
    for (const r of page.data) if (r.workflowName && !seenWorkflows.has(r.workflowName)) {
      seenWorkflows.add(r.workflowName);
      const o = document.createElement('option'); o.value = r.workflowName; o.textContent = shortName(r.workflowName); $('workflow').append(o);
    }
    $('runs').innerHTML = page.data.length ? page.data.map((r) => `<tr class="run" data-run="${esc(r.runId)}">
      <td title="${esc(r.workflowName)}">${esc(shortName(r.workflowName))}</td><td>${badge(r.status)}${unreadableMark(r)}</td>
      <td>${esc(fmtTime(r.startedAt))}</td><td>${esc(fmtMs(r.durationMs))}</td><td>${r.steps}</td>
      <td class="${r.errors ? 'err' : 'dim'}">${r.errors}</td><td class="waiting">${waitsHtml(r.waitingOn.slice(0, 2), nowNs, r.waitingCount)}</td><td class="mono"><a href="/runs/${encodeURIComponent(r.runId)}">${esc(r.runId)}</a></td></tr>`).join('')
      : `<tr><td colspan="8" class="empty">${[...query().keys()].some((k) => k !== 'limit') ? 'No runs match these filters.'
        : 'No runs yet. Point OTEL_EXPORTER_OTLP_ENDPOINT here, or start the collector with a world to follow.'}</td></tr>`;
    $('more').innerHTML = page.hasMore ? '<button id="load">Show more</button>' : '';
    if (page.hasMore) $('load').onclick = () => { limit += 100; refresh(); };
  } catch (e) { $('error').textContent = 'Cannot load runs: ' + e.message; }
}

// Runs the world tailer could not read: a mark on their row, and a box above the table naming them
// (also those of which nothing reached the store, so they have no row).
const unreadableMark = (r) => (r.problems && r.problems.length
  ? ` <span class="badge failed unreadable" title="${esc(r.problems.join('\n'))}">unreadable</span>` : '');
function drawUnreadable(u) {
  let box = $('unreadable');
  if (!box) {
    box = document.createElement('div');
    box.id = 'unreadable';
    box.className = 'panel';
    box.style.marginBottom = '12px';
    $('error').after(box);
  }
  box.hidden = !u || !u.count;
  if (box.hidden) { box.innerHTML = ''; return; }
  const more = u.count > u.runs.length ? ` <span class="dim">and ${u.count - u.runs.length} more</span>` : '';
  box.innerHTML = `<b class="err">${u.count} run${u.count === 1 ? '' : 's'} could not be read from the world</b>
    <span class="dim">(their spans are missing or incomplete here)</span><ul>${u.runs.map((x) => `<li><a class="mono" href="/runs/${encodeURIComponent(x.runId)}">${esc(x.runId)}</a>
    <span class="dim">${esc(x.problem)}</span></li>`).join('')}</ul>${more}`;
}

$('runs').addEventListener('click', (e) => { const tr = e.target.closest('tr.run'); if (tr && e.target.tagName !== 'A') location.href = '/runs/' + encodeURIComponent(tr.dataset.run); });
for (const id of ['workflow', 'status', 'since', 'until']) $(id).addEventListener('change', refresh);
// "stuck ≥": the filter, and (remembered) the age past which run pages highlight a wait
$('stuck').value = new URLSearchParams(location.search).get('stuck') || '';
$('stuck').addEventListener('change', () => {
  const v = $('stuck').value.trim();
  if (v && parseDuration(v) != null) localStorage.setItem('wft-stuck', v);
  const u = new URL(location.href);
  if (v) u.searchParams.set('stuck', v); else u.searchParams.delete('stuck');
  history.replaceState(null, '', u);
  refresh();
});
$('search').addEventListener('submit', async (e) => {
  e.preventDefault();
  try { location.href = await resolveIdent($('q').value); } catch (err) { $('error').textContent = err.status === 404 ? `No run or trace "${$('q').value}" here.` : err.message; }
});
const params = new URLSearchParams(location.search);
if (params.get('q')) resolveIdent(params.get('q')).then((u) => { location.href = u; }).catch(() => { $('error').textContent = `No run or trace "${params.get('q')}" here.`; });
refresh();
setInterval(refresh, 2000);
