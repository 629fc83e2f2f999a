/**
 * A full disk: a store on a 200 KiB tmpfs (a private mount namespace; skipped with a message
 * where mounting is not allowed) is filled to several levels of free space and a run started.
 * The run fails cleanly (exit 1, a message naming ENOSPC, no "unexpected") or fits (exit 0);
 * every entry left in the store is sound; once space is freed, the rerun succeeds.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ArtifactStore } from '../../src/runtime/store.js';
import { testdir, type TestDir } from '../fixtures/testdir.js';
import { fakeCli } from './helpers.js';

let dir: TestDir;
beforeAll(() => {
  dir = testdir({
    'p.yaml': `name: full
stages:
  src: { uses: source, with: { value: 1 } }
  a: { uses: transform, needs: [src], with: { pad: 8000 } }
  b: { uses: transform, needs: [a], with: { pad: 8000, factor: 3 } }
`,
  });
});
afterAll(() => dir.cleanup());

const LEVELS_KIB = [0, 8, 28, 48, 72];
const mountable = spawnSync('unshare', ['-m', 'sh', '-c', `mount -t tmpfs -o size=16k tmpfs "${process.env.TMPDIR ?? '/tmp'}" && echo ok`], { encoding: 'utf8' }).stdout?.trim() === 'ok';

it.skipIf(!mountable)(`disk full at ${LEVELS_KIB.join('/')} KiB free: clean failure, a sound store, and the rerun succeeds`, async () => {
  const mnt = dir.path('mnt');
  const out = dir.path('out');
  const cli = [process.execPath, ...fakeCli()].map((s) => `'${s}'`).join(' ');
  const script = `set -u
mkdir -p "${mnt}" "${out}"
mount -t tmpfs -o size=200k tmpfs "${mnt}" || exit 97
cd "${dir.root}"
for free in ${LEVELS_KIB.join(' ')}; do
  rm -rf "${mnt}"/*
  ${cli} run p.yaml --artifacts "${mnt}/artifacts" --json > "${out}/seed-$free.json" 2>&1
  avail=$(df --output=avail -B1 "${mnt}" | tail -1)
  head -c $((avail - free * 1024)) /dev/zero > "${mnt}/fill" 2>/dev/null
  ${cli} run p.yaml --artifacts "${mnt}/artifacts" --json --set stages.src.with.value=2 > "${out}/full-$free.json" 2> "${out}/full-$free.err"
  echo $? > "${out}/full-$free.code"
  cp -a "${mnt}/artifacts" "${out}/store-$free"
  rm -f "${mnt}/fill"
  ${cli} run p.yaml --artifacts "${mnt}/artifacts" --json --set stages.src.with.value=2 > "${out}/rerun-$free.json" 2> "${out}/rerun-$free.err"
  echo $? > "${out}/rerun-$free.code"
done
`;
  const result = spawnSync('unshare', ['-m', 'sh', '-c', script], { encoding: 'utf8', env: { ...process.env, PIPELINE_QUIET: '1' }, timeout: 120_000 });
  expect(result.status, result.stderr).toBe(0);
  const outcomes: string[] = [];
  for (const free of LEVELS_KIB) {
    const code = Number(readFileSync(path.join(out, `full-${free}.code`), 'utf8'));
    const stderr = readFileSync(path.join(out, `full-${free}.err`), 'utf8');
    expect([0, 1], `${free} KiB free: ${stderr}`).toContain(code);
    expect(stderr).not.toMatch(/unexpected|TypeError|at .*\.ts:\d+/);
    if (code === 1) expect(readFileSync(path.join(out, `full-${free}.json`), 'utf8') + stderr).toMatch(/ENOSPC|no space/i);
    outcomes.push(`${free}KiB:${code}`);
    // Every entry left behind is sound (the copy has new inodes: each file is re-hashed).
    const store = new ArtifactStore(path.join(out, `store-${free}`));
    const cache = path.join(out, `store-${free}`, 'cache');
    for (const key of existsSync(cache) ? readdirSync(cache) : []) expect(await store.checkEntry(key), `${free} KiB: entry ${key}`).toMatchObject({ state: 'ok' });
    expect(Number(readFileSync(path.join(out, `rerun-${free}.code`), 'utf8')), readFileSync(path.join(out, `rerun-${free}.err`), 'utf8')).toBe(0);
    const summary = JSON.parse(readFileSync(path.join(out, `rerun-${free}.json`), 'utf8'));
    expect(summary.stages.map((s: { metrics: unknown }) => s.metrics)).toEqual([{ value: 2 }, { value: 4 }, { value: 12 }]);
  }
  console.log(`disk-full outcomes (free KiB: exit code): ${outcomes.join(' ')}`);
});

it.runIf(!mountable)('disk full: skipped (cannot mount a tmpfs in a private mount namespace here)', () => {
  console.log('ENOSPC test skipped: `unshare -m` + `mount -t tmpfs` is not allowed on this machine');
});
