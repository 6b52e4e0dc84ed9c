// The runs page: filters, search (run id or trace id), live refresh.
const $ = (id) => document.getElementById(id);
const seenWorkflows = new Set();
let limit = 100;

function query() {
  const p = new URLSearchParams({ limit });
  for (const k of ['workflow', 'status']) if ($(k).value) p.set(k, $(k).value);
  for (const k of ['since', 'until']) if ($(k).value) p.set(k, new Date($(k).value).toISOString());
  return p;
}

async function refresh() {
  try {
    const page = await api('/api/runs?' + query());
    $('error').textContent = '';
    for (const r of page.data) if (r.workflowName && !seenWorkflows.has(r.workflowName)) {
      seenWorkflows.add(r.workflowName);
      const o = document.createElement('option'); o.value = r.workflowName; o.textContent = shortName(r.workflowName); $('workflow').append(o);
    }
    $('runs').innerHTML = page.data.length ? page.data.map((r) => `<tr class="run" data-run="${esc(r.runId)}">
      <td title="${esc(r.workflowName)}">${esc(shortName(r.workflowName))}</td><td>${badge(r.status)}</td>
      <td>${esc(fmtTime(r.startedAt))}</td><td>${esc(fmtMs(r.durationMs))}</td><td>${r.steps}</td>
      <td class="${r.errors ? 'err' : 'dim'}">${r.errors}</td><td class="mono"><a href="/runs/${encodeURIComponent(r.runId)}">${esc(r.runId)}</a></td></tr>`).join('')
      : '<tr><td colspan="7" class="empty">No runs yet. Point OTEL_EXPORTER_OTLP_ENDPOINT here, or start the collector with a world to follow.</td></tr>';
    $('more').innerHTML = page.hasMore ? '<button id="load">Show more</button>' : '';
    if (page.hasMore) $('load').onclick = () => { limit += 100; refresh(); };
  } catch (e) { $('error').textContent = 'Cannot load runs: ' + e.message; }
}

$('runs').addEventListener('click', (e) => { const tr = e.target.closest('tr.run'); if (tr && e.target.tagName !== 'A') location.href = '/runs/' + encodeURIComponent(tr.dataset.run); });
for (const id of ['workflow', 'status', 'since', 'until']) $(id).addEventListener('change', refresh);
$('search').addEventListener('submit', async (e) => {
  e.preventDefault();
  try { location.href = await resolveIdent($('q').value); } catch (err) { $('error').textContent = err.status === 404 ? `No run or trace "${$('q').value}" here.` : err.message; }
});
const params = new URLSearchParams(location.search);
if (params.get('q')) resolveIdent(params.get('q')).then((u) => { location.href = u; }).catch(() => { $('error').textContent = `No run or trace "${params.get('q')}" here.`; });
refresh();
setInterval(refresh, 2000);
