// A run's stream through the REAL SDK (@workflow/core 4.8 + the world packages, from the harness's
// npm install): its writer (getSerializeStream → WorkflowServerWritableStream, what getWritable()
// pipes into) and its reader (getRun(runId).getReadable()).
//
//   node streams.mjs frames [-]                   the SDK's frame bytes for streamValues() (or stdin's), as hex
//   node streams.mjs write WORLD RUN_ID [NS]      write streamValues() to the run's stream, close it
//   node streams.mjs read  WORLD RUN_ID [NS]      print the values the SDK reads from it (tagged JSON)
//
// WORLD: local (WORKFLOW_LOCAL_DATA_DIR), postgres (WORKFLOW_POSTGRES_URL; run with the harness app
// as the working directory, where the SDK resolves @workflow/world-postgres), vercel (FAKE_URL, TOKEN,
// optional DEPLOYMENT_KEY + PROJECT: the SDK's in-deployment key derivation).
import { readFileSync } from 'node:fs';
import { hex, load, readAll, streamValues, tagged, untagged } from './sdk.mjs';

const [mode, worldName, runId, namespace] = process.argv.slice(2);
const ser = await load('@workflow/core/serialization');
const runtime = await load('@workflow/core/runtime');

if (mode === 'frames') {
  const serialize = ser.getSerializeStream(ser.getExternalReducers(globalThis, [], 'wrun_frames', undefined), undefined);
  const frames = readAll(serialize.readable);
  const writer = serialize.writable.getWriter();
  // `frames -`: the values come as tagged JSON on stdin (see sdk.mjs untagged)
  const values = worldName === '-' ? JSON.parse(readFileSync(0, 'utf8')).map(untagged) : streamValues();
  for (const value of values) await writer.write(value);
  await writer.close();
  process.stdout.write(JSON.stringify((await frames).map(hex)));
  process.exit(0);
}

let world;
if (worldName === 'vercel') {
  process.env.VERCEL_WORKFLOW_SERVER_URL = process.env.FAKE_URL;
  if (process.env.DEPLOYMENT_KEY) {
    Object.assign(process.env, {
      VERCEL: '1',
      VERCEL_DEPLOYMENT_KEY: process.env.DEPLOYMENT_KEY,
      VERCEL_DEPLOYMENT_ID: process.env.DEPLOYMENT_ID || 'dpl_contract',
      VERCEL_PROJECT_ID: process.env.PROJECT,
    });
  }
  const wv = await load('@workflow/world-vercel');
  world = wv.createVercelWorld({ token: process.env.TOKEN });
} else {
  process.env.WORKFLOW_TARGET_WORLD = worldName === 'postgres' ? '@workflow/world-postgres' : 'local';
  world = runtime.createWorld();
}
runtime.setWorld(world);

const name = `${runId.replace('wrun_', 'strm_')}_user${namespace ? `_${Buffer.from(namespace).toString('base64url')}` : ''}`;
if (mode === 'write') {
  // the key the SDK's writer would use for this run (none on worlds that do not encrypt)
  const raw = world.getEncryptionKeyForRun ? await world.getEncryptionKeyForRun(await world.runs.get(runId)) : undefined;
  const key = raw ? await (await load('@workflow/core/encryption')).importKey(raw) : undefined;
  const serialize = ser.getSerializeStream(ser.getExternalReducers(globalThis, [], runId, key), key);
  const pipe = serialize.readable.pipeTo(new ser.WorkflowServerWritableStream(name, runId));
  const writer = serialize.writable.getWriter();
  for (const value of streamValues()) await writer.write(value);
  await writer.close();
  await pipe;
  process.stdout.write(JSON.stringify({ name }));
} else if (mode === 'read') {
  const values = await readAll(runtime.getRun(runId).getReadable(namespace ? { namespace } : {}));
  process.stdout.write(JSON.stringify({ name, values: values.map(tagged) }));
} else {
  throw new Error(`unknown mode ${mode}`);
}
process.exit(0);
