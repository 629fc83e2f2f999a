/**
 * Content-addressed entries: files are stored once by sha256 under cas/, entries hold hard links
 * to them; a stage that passes its input's bytes through adds only its record; a damaged shared
 * blob is found from every entry that links it, removed, recomputed and never used; gc removes
 * the blobs no kept entry lists.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { copyFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { runPipeline } from '../../../src/runtime/run.js';
import { ArtifactStore } from '../../../src/runtime/store.js';
import type { StageDefinition } from '../../../src/runtime/types.js';
import { calls, fakeRegistry } from '../../fixtures/fake-stages.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';

/** Like `freeze`: the same bytes as its input, a new record. */
const passthrough: StageDefinition<Record<string, never>> = {
  kind: 'passthrough',
  version: 1,
  description: 'test: copies its input',
  paramsSchema: { type: 'object', additionalProperties: false, properties: {} },
  consumes: ['data'],
  provides: ['data'],
  async run(ctx) {
    calls.push(ctx.id);
    const from = ctx.input('data').dir;
    for (const name of await readdir(from)) if (name !== '_entry.json') await copyFile(path.join(from, name), path.join(ctx.outDir, name));
    return { metrics: {} };
  },
};
const registry = { ...fakeRegistry, passthrough };

const pipeline = `name: cas
stages:
  seed: { uses: source, with: { value: 3 } }
  src: { uses: transform, needs: [seed], with: { pad: 200000 } }
  frozen: { uses: passthrough, needs: [src] }
  again: { uses: passthrough, needs: [frozen] }
`;

let dir: TestDir;
beforeEach(() => {
  calls.length = 0;
  dir = testdir({ 'p.yaml': pipeline });
});
afterEach(() => dir.cleanup());

const run = (overrides: string[] = []) => runPipeline({ file: dir.path('p.yaml'), registry, artifacts: dir.path('artifacts'), overrides });
const entry = (key: string, rel = '') => dir.path('artifacts/cache', key, rel);
/** Bytes on disk under the store, each inode once (what `du` counts). */
function storeBytes(): number {
  const seen = new Set<number>();
  let total = 0;
  const walk = (at: string) => {
    for (const item of readdirSync(at, { withFileTypes: true })) {
      const full = path.join(at, item.name);
      if (item.isDirectory()) walk(full);
      else if (!seen.has(statSync(full).ino)) {
        seen.add(statSync(full).ino);
        total += statSync(full).size;
      }
    }
  };
  walk(dir.path('artifacts'));
  return total;
}

it('stores identical files once: a pass-through stage adds its record, not a copy', async () => {
  const first = await run();
  expect(first.status).toBe('succeeded');
  const [src, frozen, again] = ['src', 'frozen', 'again'].map((id) => first.stages.find((s) => s.id === id)!.key);
  const pad = statSync(entry(src!, 'pad.bin'));
  // One inode for the three entries' pad.bin and the blob in cas/.
  expect(statSync(entry(frozen!, 'pad.bin')).ino).toBe(pad.ino);
  expect(statSync(entry(again!, 'pad.bin')).ino).toBe(pad.ino);
  expect(pad.nlink).toBe(4);
  const meta = JSON.parse(readFileSync(entry(frozen!, '_entry.json'), 'utf8'));
  expect(statSync(dir.path('artifacts/cas/sha256', meta.files['pad.bin'].sha256.slice(0, 2), meta.files['pad.bin'].sha256)).ino).toBe(pad.ino);
  // The pass-through entries cost well under the 200 kB file they list.
  rmSync(entry(again!), { recursive: true });
  rmSync(entry(frozen!), { recursive: true });
  const without = storeBytes();
  calls.length = 0;
  await run();
  expect(calls).toEqual(['frozen', 'again']);
  expect(storeBytes() - without).toBeLessThan(20_000);
  // Linking the blob into new entries moved its ctime; the older entry is still sound and
  // matches the blob's verified stat, so it is not re-read.
  const store = new ArtifactStore(dir.path('artifacts'));
  expect(await store.checkEntry(src!)).toMatchObject({ state: 'ok' });
  expect(await store.cache.blobs.verifiedStat(meta.files['pad.bin'].sha256)).toMatchObject({ ino: pad.ino, ctimeMs: statSync(entry(src!, 'pad.bin')).ctimeMs });
});

it('a shared blob damaged in place (size and mtime kept) is found from every entry, never used, and recomputed', async () => {
  const first = await run();
  const key = (id: string) => first.stages.find((s) => s.id === id)!.key;
  const file = entry(key('frozen'), 'pad.bin');
  // Flip one byte through one entry's link: it is the blob, and the other entries' file too.
  const reference = `${dir.path('times')}`;
  writeFileSync(reference, '');
  spawnSync('touch', ['-r', file, reference]);
  const bytes = readFileSync(file);
  bytes[100] = (bytes[100]! + 1) % 256;
  writeFileSync(file, bytes);
  spawnSync('touch', ['-r', reference, file]);
  calls.length = 0;
  const second = await run();
  expect(second.status).toBe('succeeded');
  // src wrote the blob first: it re-runs, and its dependents are keyed by the same bytes again.
  expect(calls).toContain('src');
  expect(second.stages.find((s) => s.id === 'src')!.reasons!.join()).toMatch(/corrupt/);
  const sound = readFileSync(entry(key('src'), 'pad.bin'));
  expect(sound.every((b) => b === sound[0])).toBe(true);
  for (const id of ['frozen', 'again']) expect(readFileSync(entry(second.stages.find((s) => s.id === id)!.key, 'pad.bin')).equals(sound), id).toBe(true);
  calls.length = 0;
  expect((await run()).stages.map((s) => s.status)).toEqual(['cached', 'cached', 'cached', 'cached']);
  expect(calls).toEqual([]);
});

it('gc removes the blobs no kept entry lists and keeps the shared ones', async () => {
  await run();
  await run(['stages.seed.with.value=4']);
  const blobs = () => readdirSync(dir.path('artifacts/cas/sha256')).flatMap((p) => readdirSync(dir.path('artifacts/cas/sha256', p)));
  const before = blobs().length;
  // What a process killed while writing a blob leaves: not a blob, removed by gc.
  const prefix = readdirSync(dir.path('artifacts/cas/sha256'))[0]!;
  writeFileSync(dir.path('artifacts/cas/sha256', prefix, `${'a'.repeat(64)}.1234abcd.part`), 'half');
  const store = new ArtifactStore(dir.path('artifacts'));
  const release = await store.lockStore();
  const result = await store.gc(1);
  await release();
  // The value-3 run's entries go; its value.json and pad.bin blobs with them (value 4 differs).
  expect(result.removed.length).toBe(4);
  expect(result.removedBlobs).toBeGreaterThanOrEqual(2);
  expect(blobs().length).toBe(before - result.removedBlobs); // the .part is gone too
  expect(result.freedBytes).toBeGreaterThan(200_000);
  calls.length = 0;
  const kept = await run(['stages.seed.with.value=4']);
  expect(kept.stages.map((s) => s.status)).toEqual(['cached', 'cached', 'cached', 'cached']);
});
