// Loads the REAL Workflow SDK packages from the sdk-harness's npm install (no copy, no stub).
//
// ESM ignores NODE_PATH, so the node_modules directory comes in WFT_SDK_NODE_MODULES (NODE_PATH
// is accepted too) and each package is resolved from there with the package's own "exports".
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const roots = [process.env.WFT_SDK_NODE_MODULES, ...(process.env.NODE_PATH || '').split(':')].filter(Boolean);
if (roots.length === 0) {
  throw new Error('set WFT_SDK_NODE_MODULES to the harness node_modules directory');
}
const requireFrom = createRequire(`${roots[0].replace(/\/$/, '')}/`);

export async function load(name) {
  return import(pathToFileURL(requireFrom.resolve(name)).href);
}

// Values as tagged JSON, so Python can compare what the SDK decoded without guessing types.
export function tagged(value) {
  if (value === undefined) return { $undefined: true };
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return value;
  if (typeof value === 'number') {
    if (Number.isNaN(value) || !Number.isFinite(value) || Object.is(value, -0)) return { $num: String(value) };
    return value;
  }
  if (typeof value === 'bigint') return { $bigint: value.toString() };
  if (value instanceof Date) return { $date: value.toISOString() };
  if (value instanceof Uint8Array) return { $bytes: Buffer.from(value).toString('base64') };
  if (value instanceof Map) return { $map: [...value].map(([k, v]) => [tagged(k), tagged(v)]) };
  if (value instanceof Set) return { $set: [...value].map(tagged) };
  if (Array.isArray(value)) return value.map(tagged);
  if (value instanceof Error) return { $error: { name: value.name, message: value.message } };
  const out = {};
  for (const [k, v] of Object.entries(value)) out[k] = tagged(v);
  return out;
}

export const hex = (bytes) => (bytes instanceof Uint8Array ? Buffer.from(bytes).toString('hex') : null);

// The values every stream test writes and reads (tests/test_stream_format.py has their Python twins).
export function streamValues() {
  return [
    'hello',
    42,
    3.5,
    { a: 1, nested: { b: [1, 2, 'x'] }, '<tag>': '</script>', 10: 'ten', 2: 'two' },
    new Uint8Array([0, 1, 2, 255]),
    new Date('2026-01-02T03:04:05.678Z'),
    null,
    true,
    'ünïcødé ✓ \u2028 "quoted"\n',
    [1, 'two', { three: 3 }, 'two'],
    1e21,
    1.5e-7,
    -12,
    new Uint8Array([]),
  ];
}

export async function readAll(readable) {
  const out = [];
  const reader = readable.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return out;
    out.push(value);
  }
}

// The inverse, for values Python sends: {$object: [[k, v], …]} keeps Python's key order as the
// insertion order (JavaScript then puts integer-like keys first, as it does for any object).
export function untagged(value) {
  if (value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map(untagged);
  if ('$undefined' in value) return undefined;
  if ('$num' in value) return value.$num === '-0' ? -0 : Number(value.$num);
  if ('$bigint' in value) return BigInt(value.$bigint);
  if ('$date' in value) return new Date(value.$date);
  if ('$bytes' in value) return new Uint8Array(Buffer.from(value.$bytes, 'base64'));
  if ('$set' in value) return new Set(value.$set.map(untagged));
  if ('$object' in value) {
    const out = {};
    for (const [k, v] of value.$object) out[k] = untagged(v);
    return out;
  }
  const out = {};
  for (const [k, v] of Object.entries(value)) out[k] = untagged(v);
  return out;
}
