// The REAL @workflow/world-vercel client (4.7.x, from the harness's npm install) against the fake
// workflow server: it writes runs, steps, events, hooks and a stream through the package's own
// world, reads everything back through the same world, and prints both as JSON on stdout.
//
// env: FAKE_URL (the fake's base URL), TOKEN, MODE=direct|proxy,
//      DEPLOYMENT_KEY (base64, optional: payloads and the stream are then encrypted), PROJECT.
import { hex, load, readAll, streamValues, tagged } from './sdk.mjs';

const { FAKE_URL, TOKEN, MODE = 'direct', DEPLOYMENT_KEY, PROJECT = 'prj_contract', TEAM = 'team_contract' } =
  process.env;

if (MODE === 'proxy') {
  process.env.WORKFLOW_VERCEL_BACKEND_URL = `${FAKE_URL}/proxy`;
  process.env.VERCEL_WORKFLOW_SERVER_URL = 'https://workflow-server-git-branch.vercel.sh';
} else {
  process.env.VERCEL_WORKFLOW_SERVER_URL = FAKE_URL;
}
if (DEPLOYMENT_KEY) {
  // The SDK's own in-deployment key path: HKDF of VERCEL_DEPLOYMENT_KEY for runs of this deployment.
  Object.assign(process.env, {
    VERCEL: '1',
    VERCEL_DEPLOYMENT_KEY: DEPLOYMENT_KEY,
    VERCEL_DEPLOYMENT_ID: 'dpl_contract',
    VERCEL_PROJECT_ID: PROJECT,
  });
}

const wv = await load('@workflow/world-vercel');
const runtime = await load('@workflow/core/runtime');
const ser = await load('@workflow/core/serialization');
const enc = await load('@workflow/core/encryption');
const { monotonicFactory } = await load('ulid');
const ulid = monotonicFactory();

const world = wv.createVercelWorld(
  MODE === 'proxy'
    ? { token: TOKEN, projectConfig: { projectId: PROJECT, teamId: TEAM, environment: 'preview' } }
    : { token: TOKEN },
);
if (MODE === 'proxy' && !DEPLOYMENT_KEY) {
  // Outside a deployment, with a project set, world-vercel asks api.vercel.com for each run's key
  // (a hard-coded host, unreachable here); these runs are not encrypted, so there is no key.
  world.getEncryptionKeyForRun = async () => undefined;
}
runtime.setWorld(world);

async function keyFor(runId) {
  if (!DEPLOYMENT_KEY) return undefined;
  return enc.importKey(await wv.deriveRunKey(Buffer.from(DEPLOYMENT_KEY, 'base64'), PROJECT, runId));
}

const written = { runs: {}, payloads: {} };
const create = async (runId, eventType, eventData, correlationId) => {
  const result = await world.events.create(runId, {
    eventType,
    specVersion: 2,
    ...(correlationId ? { correlationId } : {}),
    ...(eventData ? { eventData } : {}),
  });
  return result;
};

// ---- run A: created, started, a step retried then completed, a hook, a sleep, a stream, completed
const runA = `wrun_${ulid()}`;
const keyA = await keyFor(runA);
const stepA = `step_${ulid()}`;
const hookA = `hook_${ulid()}`;
const waitA = `wait_${ulid()}`;
const tokenA = `tok_${ulid()}`;
const inputA = await ser.dehydrateWorkflowArguments(
  [{ order: 7, at: new Date('2026-03-04T05:06:07.089Z') }, 'express'],
  runA,
  keyA,
);
const stepInput = await ser.dehydrateStepArguments([7, new Uint8Array([9, 8, 7])], runA, keyA);
const stepResult = await ser.dehydrateStepReturnValue({ ok: true, bytes: new Uint8Array([1, 2, 3]) }, runA, keyA);
const hookMeta = await ser.dehydrateStepReturnValue({ approver: 'ops' }, runA, keyA);
const hookPayload = await ser.dehydrateStepReturnValue({ approved: true, note: 'lgtm' }, runA, keyA);
const outputA = await ser.dehydrateWorkflowReturnValue(
  { total: 42, when: new Date('2026-03-04T05:06:08.000Z') },
  runA,
  keyA,
);
const retryAfter = new Date(Date.now() + 2000);
const resumeAt = new Date(Date.now() + 1000);
written.payloads = {
  runInput: hex(inputA),
  stepInput: hex(stepInput),
  stepResult: hex(stepResult),
  hookMeta: hex(hookMeta),
  hookPayload: hex(hookPayload),
  runOutput: hex(outputA),
};

const created = await create(runA, 'run_created', {
  deploymentId: 'dpl_contract',
  workflowName: 'workflow//./workflows/contract//orderFlow',
  input: inputA,
  executionContext: { workflowCoreVersion: '4.8.9', region: 'iad1' },
});
await create(runA, 'run_started');
await create(runA, 'step_created', { stepName: 'step//./workflows/contract//charge', input: stepInput }, stepA);
await create(runA, 'step_started', { attempt: 1 }, stepA);
await create(runA, 'step_retrying', { error: 'card declined', stack: 'Error: card declined\n    at charge', retryAfter }, stepA);
await create(runA, 'step_started', { attempt: 2 }, stepA);
await create(runA, 'step_completed', { result: stepResult }, stepA);
await create(runA, 'hook_created', { token: tokenA, metadata: hookMeta, isWebhook: false }, hookA);
await create(runA, 'hook_received', { token: tokenA, payload: hookPayload }, hookA);
await create(runA, 'wait_created', { resumeAt }, waitA);
await create(runA, 'wait_completed', undefined, waitA);

// the run's default stream, written the way getWritable() writes it (serialize → server writable)
const streamName = `${runA.replace('wrun_', 'strm_')}_user`;
const serialize = ser.getSerializeStream(ser.getExternalReducers(globalThis, [], runA, keyA), keyA);
const pipe = serialize.readable.pipeTo(new ser.WorkflowServerWritableStream(streamName, runA));
const writer = serialize.writable.getWriter();
for (const value of streamValues()) await writer.write(value);
await writer.close();
await pipe;
await create(runA, 'run_completed', { output: outputA });

// ---- run B: a step that fails, a hook created then disposed, the run failed
const runB = `wrun_${ulid()}`;
const keyB = await keyFor(runB);
const stepB = `step_${ulid()}`;
const hookB = `hook_${ulid()}`;
await create(runB, 'run_created', {
  deploymentId: 'dpl_contract',
  workflowName: 'workflow//./workflows/contract//refund',
  input: await ser.dehydrateWorkflowArguments(['r-1'], runB, keyB),
});
await create(runB, 'run_started');
await create(runB, 'step_created', { stepName: 'step//./workflows/contract//refund', input: await ser.dehydrateStepArguments([], runB, keyB) }, stepB);
await create(runB, 'step_started', { attempt: 1 }, stepB);
await create(runB, 'step_failed', { error: 'boom', stack: 'Error: boom\n    at refund' }, stepB);
await create(runB, 'hook_created', { token: `tok_${ulid()}`, metadata: await ser.dehydrateStepReturnValue(null, runB, keyB) }, hookB);
await create(runB, 'hook_disposed', { token: 'unused' }, hookB);
await create(runB, 'run_failed', { error: { message: 'boom', stack: 'Error: boom\n    at refund' }, errorCode: 'USER_ERROR' });

written.runs = { runA, runB, stepA, stepB, hookA, hookB, waitA, tokenA, streamName, createdRun: created.run?.runId };

// ---- read everything back through the same client
const iso = (d) => (d instanceof Date ? d.toISOString() : d ?? null);
async function decodePayload(bytes, runId, kind) {
  if (!(bytes instanceof Uint8Array)) return { $absent: true };
  const key = await keyFor(runId);
  if (kind === 'workflowArgs') return tagged(await ser.hydrateWorkflowArguments(bytes, runId, key));
  if (kind === 'workflowReturn') return tagged(await ser.hydrateWorkflowReturnValue(bytes, runId, key));
  if (kind === 'stepArgs') return tagged(await ser.hydrateStepArguments(bytes, runId, key));
  return tagged(await ser.hydrateStepReturnValue(bytes, runId, key));
}
const runJson = async (run) => ({
  runId: run.runId,
  status: run.status,
  workflowName: run.workflowName,
  deploymentId: run.deploymentId,
  createdAt: iso(run.createdAt),
  startedAt: iso(run.startedAt),
  completedAt: iso(run.completedAt),
  error: run.error ?? null,
  executionContext: run.executionContext ?? null,
  inputHex: hex(run.input),
  outputHex: hex(run.output),
  input: await decodePayload(run.input, run.runId, 'workflowArgs'),
  output: await decodePayload(run.output, run.runId, 'workflowReturn'),
});
const stepJson = async (step) => ({
  stepId: step.stepId,
  runId: step.runId,
  stepName: step.stepName,
  status: step.status,
  attempt: step.attempt,
  createdAt: iso(step.createdAt),
  startedAt: iso(step.startedAt),
  completedAt: iso(step.completedAt),
  retryAfter: iso(step.retryAfter),
  error: step.error ? { message: step.error.message, stack: step.error.stack ?? null } : null,
  inputHex: hex(step.input),
  outputHex: hex(step.output),
  input: await decodePayload(step.input, step.runId, 'stepArgs'),
  output: await decodePayload(step.output, step.runId, 'stepReturn'),
});
const PAYLOAD = { run_created: 'input', step_created: 'input', step_completed: 'result', run_completed: 'output', hook_created: 'metadata', hook_received: 'payload' };
const eventJson = async (event) => {
  const field = PAYLOAD[event.eventType];
  const raw = field ? event.eventData?.[field] : undefined;
  const data = event.eventData ?? {};
  return {
    eventId: event.eventId,
    runId: event.runId,
    eventType: event.eventType,
    correlationId: event.correlationId ?? null,
    createdAt: iso(event.createdAt),
    payloadHex: hex(raw),
    payload: field ? await decodePayload(raw, event.runId, event.eventType === 'run_created' ? 'workflowArgs' : event.eventType === 'run_completed' ? 'workflowReturn' : event.eventType === 'step_created' ? 'stepArgs' : 'stepReturn') : null,
    error: data.error && typeof data.error === 'object' && !(data.error instanceof Uint8Array) ? { message: data.error.message, stack: data.error.stack ?? null } : null,
    resumeAt: iso(data.resumeAt),
    retryAfter: iso(data.retryAfter),
    token: data.token ?? null,
    stepName: data.stepName ?? null,
    workflowName: data.workflowName ?? null,
  };
};
const hookJson = async (hook) => ({
  hookId: hook.hookId,
  runId: hook.runId,
  token: hook.token,
  createdAt: iso(hook.createdAt),
  metadataHex: hex(hook.metadata),
  metadata: await decodePayload(hook.metadata, hook.runId, 'stepReturn'),
});

async function allPages(list, limit) {
  const out = [];
  let cursor;
  let pages = 0;
  for (;;) {
    const page = await list({ limit, ...(cursor ? { cursor } : {}) });
    out.push(...page.data);
    pages += 1;
    if (!page.hasMore || !page.cursor) return { items: out, pages };
    cursor = page.cursor;
  }
}

const read = {};
read.runs = [await runJson(await world.runs.get(runA)), await runJson(await world.runs.get(runB))];
const listed = await allPages((pagination) => world.runs.list({ pagination, resolveData: 'none' }), 1);
read.runList = { ids: listed.items.map((r) => r.runId), pages: listed.pages };
read.failedRuns = (await world.runs.list({ status: 'failed' })).data.map((r) => r.runId);
read.steps = await Promise.all((await world.steps.list({ runId: runA })).data.map(stepJson));
read.stepsB = await Promise.all((await world.steps.list({ runId: runB })).data.map(stepJson));
read.stepByRun = await stepJson(await world.steps.get(runA, stepA));
read.stepAlone = await stepJson(await world.steps.get(undefined, stepA));
const events = await allPages((pagination) => world.events.list({ runId: runA, pagination }), 4);
read.events = await Promise.all(events.items.map(eventJson));
read.eventPages = events.pages;
read.eventsB = await Promise.all((await world.events.list({ runId: runB })).data.map(eventJson));
const completedEvent = events.items.find((e) => e.eventType === 'step_completed');
read.eventGet = await eventJson(await world.events.get(runA, completedEvent.eventId));
read.byCorrelation = (await world.events.listByCorrelationId({ correlationId: stepA })).data.map((e) => e.eventType);
read.hooks = await Promise.all((await world.hooks.list({ runId: runA })).data.map(hookJson));
read.hooksB = (await world.hooks.list({ runId: runB })).data.map((h) => h.hookId);
read.hookGet = await hookJson(await world.hooks.get(hookA));
read.hookByToken = (await world.hooks.getByToken(tokenA)).hookId;
try {
  await world.hooks.getByToken('tok_nope');
  read.missingHook = 'found?';
} catch (error) {
  read.missingHook = error.name;
}
try {
  await world.runs.get('wrun_01ARZ3NDEKTSV4RRFFQ69G5FAV');
  read.missingRun = 'found?';
} catch (error) {
  read.missingRun = error.name;
}
read.streams = await world.listStreamsByRunId(runA);
read.streamInfo = await world.getStreamInfo(streamName, runA);
const chunkPages = [];
let chunkCursor;
for (;;) {
  const page = await world.getStreamChunks(streamName, runA, { limit: 5, ...(chunkCursor ? { cursor: chunkCursor } : {}) });
  chunkPages.push(page.data.map((c) => ({ index: c.index, hex: hex(c.data) })));
  if (!page.hasMore) break;
  chunkCursor = page.cursor;
}
read.streamChunks = chunkPages;
read.streamValues = (await readAll(runtime.getRun(runA).getReadable())).map(tagged);
try {
  await world.writeToStream(streamName, runA, new Uint8Array([1]));
  read.lateWrite = 'accepted';
} catch (error) {
  read.lateWrite = String(error.message).slice(0, 80);
}

process.stdout.write(JSON.stringify({ written, read }));
process.exit(0);
