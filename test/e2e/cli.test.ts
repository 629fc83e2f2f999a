/**
 * The built CLI as a user runs it: every bad pipeline file exits 2 quickly with file, line and
 * a fix, prints no stack trace, and writes nothing.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testdir, type TestDir } from '../fixtures/testdir.js';

const bin = path.resolve(import.meta.dirname, '../../bin/pipeline.js');
let dir: TestDir;
beforeAll(() => {
  dir = testdir({ 'images/a/1.png': '' });
});
afterAll(() => dir.cleanup());

function cli(args: string[]) {
  const t0 = performance.now();
  const result = spawnSync(process.execPath, [bin, ...args], { cwd: dir.root, encoding: 'utf8', env: { ...process.env, CI: 'true' } });
  return { ...result, ms: performance.now() - t0 };
}

const valid = `name: ok
stages:
  data:
    uses: ingest
    with: { path: images }
`;

const bomb = ['name: x', 'a: &a [l,l,l,l,l,l,l,l,l]', 'b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]', 'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]', 'd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]', 'e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]', 'stages: { s: { uses: ingest, with: { path: images, extensions: *e } } }'].join('\n');

const cases: [string, string, RegExp, number | undefined][] = [
  ['yaml syntax error', 'name: x\nstages: [\n', /yaml_/, 3],
  ['empty file', '', /empty_file/, undefined],
  ['a list instead of a map', '- name: x\n', /a map/, 1],
  ['unknown top-level key', valid + 'sede: 1\n', /did you mean 'seed'/, 6],
  ['unknown stage kind', valid.replace('uses: ingest', 'uses: ingset'), /did you mean 'ingest'/, 4],
  ['wrong param type', valid.replace('{ path: images }', '{ path: images, strict: "yes" }'), /true or false/, 5],
  ['needs naming a missing stage', valid + '  more:\n    uses: ingest\n    needs: [dta]\n    with: { path: images }\n', /did you mean 'data'/, 8],
  ['a cycle', 'name: c\nstages:\n  a: { uses: ingest, needs: [b], with: { path: images } }\n  b: { uses: ingest, needs: [a], with: { path: images } }\n', /cycle: a -> b -> a/, 3],
  ['an id like ../../x', 'name: x\nstages:\n  "../../x": { uses: ingest, with: { path: images } }\n', /not a valid stage id/, 3],
  ['an id __proto__', 'name: x\nstages:\n  __proto__: { uses: ingest, with: { path: images } }\n', /not a valid stage id/, 3],
  ['a billion-laughs alias bomb', bomb, /alias/, undefined],
  ['a missing data folder', valid.replace('{ path: images }', '{ path: imagez }'), /input_not_found[\s\S]*imagez does not exist|imagez does not exist[\s\S]*input_not_found/, 5],
  ['a data path that is a file', valid.replace('{ path: images }', '{ path: images/a/1.png }'), /is a file, not a folder/, 5],
  ['a missing manifest', valid.replace('{ path: images }', '{ manifest: labels.csv }'), /manifest .*labels\.csv does not exist/, 5],
  ['a missing base model', 'name: x\nstages:\n  base:\n    uses: load-base\n    with: { model: models/none/model.json }\n', /models\/none\/model\.json does not exist/, 5],
  ['rank-bases without candidates', valid + '  shards: { uses: preprocess, needs: [data] }\n  rank:\n    uses: rank-bases\n    needs: [shards]\n    with: { models: [] }\n', /models must list at least 1 item, got 0/, 10],
  ['a rank-bases candidate that does not exist', valid + '  shards: { uses: preprocess, needs: [data] }\n  rank:\n    uses: rank-bases\n    needs: [shards]\n    with:\n      models:\n        - { name: a, model: models/none/model.json }\n', /models\/none\/model\.json does not exist/, 12],
];

describe('pipeline validate/run on bad files', () => {
  it.each(cases)('%s: exit 2, file and line, no stack, nothing written', (name, text, message, line) => {
    const file = dir.write(`${name.replace(/\W+/g, '-')}.yaml`, text);
    for (const command of ['validate', 'plan', 'run']) {
      const result = cli([command, file]);
      expect(result.status, result.stderr).toBe(2);
      expect(result.stderr).toMatch(message);
      expect(result.stderr).toContain(line ? `${file}:${line}:` : file);
      expect(result.stderr).not.toMatch(/\n\s+at .*:\d+:\d+\)?\n/);
      expect(result.ms).toBeLessThan(10_000); // a loaded CI box; `npm run bench runtime` measures the real figure (~0.2 s)
      expect(existsSync(dir.path('artifacts'))).toBe(false);
    }
  });

  it('bad command lines exit 2 with usage', () => {
    expect(cli(['frobnicate']).status).toBe(2);
    expect(cli(['run']).status).toBe(2);
    expect(cli(['run', 'x.yaml', '--jobs', 'zero']).stderr).toContain('--jobs must be a whole number');
    expect(cli(['run', dir.write('v.yaml', valid), '--backend', 'tpu']).status).toBe(2);
    expect(cli(['run', 'missing.yaml']).stderr).toContain('cannot read missing.yaml');
    expect(existsSync(dir.path('artifacts'))).toBe(false);
  });

  it('options that do not apply to a command are refused; --json errors are one JSON object', () => {
    const file = dir.write('v3.yaml', valid);
    expect(cli(['validate', file, '--top', '3']).status).toBe(2);
    expect(cli(['run', file, '--keep', '2']).stderr).toContain("--keep does not apply to 'run'");
    const bad = cli(['run', file, '--json', '--bogus']);
    expect(bad.status).toBe(2);
    expect(JSON.parse(bad.stdout)).toMatchObject({ status: 'error', error: { code: 'usage' } });
    const invalid = cli(['run', dir.write('bad-json.yaml', 'name: x\n'), '--json']);
    expect(JSON.parse(invalid.stdout)).toMatchObject({ status: 'invalid' });
    expect(existsSync(dir.path('artifacts'))).toBe(false);
  });

  it('a store or report under /proc, /sys or /dev is refused at once (a recursive mkdir there never returns)', () => {
    const file = dir.write('v4.yaml', valid);
    const run = spawnSync(process.execPath, [bin, 'run', file, '--artifacts', '/proc/store', '--json'], { cwd: dir.root, encoding: 'utf8', env: { ...process.env, CI: 'true' }, timeout: 20_000 });
    expect(run.status).toBe(2);
    expect(JSON.parse(run.stdout)).toMatchObject({ error: { code: 'path_special' } });
    const viaEnv = spawnSync(process.execPath, [bin, 'status'], { cwd: dir.root, encoding: 'utf8', env: { ...process.env, CI: 'true', PIPELINE_ARTIFACTS: '/dev/shm/../store' }, timeout: 20_000 });
    expect(viaEnv.status).toBe(2);
    expect(viaEnv.stderr).toContain('$PIPELINE_ARTIFACTS /dev/store: lies under /dev');
    const report = spawnSync(process.execPath, [bin, 'report', '--out', '/sys/x/report.html'], { cwd: dir.root, encoding: 'utf8', env: { ...process.env, CI: 'true' }, timeout: 20_000 });
    expect(report.status).toBe(2);
    expect(report.stderr).toContain('--out /sys/x/report.html: lies under /sys');
    expect(report.stderr).not.toMatch(/\n\s+at /);
  });

  it('--set errors point at the command line', () => {
    const result = cli(['validate', dir.write('v2.yaml', valid), '--set', 'stages.data.with.strict=maybe']);
    expect(result.status).toBe(2);
    expect(result.stderr).toContain('stages.data.with.strict');
  });
});

describe('help and version', () => {
  it('each command has its own help listing only its options; help COMMAND is the same text', () => {
    const run = cli(['run', '--help']);
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/^usage: pipeline run FILE/);
    expect(run.stdout).toContain('--backend');
    expect(run.stdout).not.toContain('--top');
    expect(cli(['help', 'run']).stdout).toBe(run.stdout);
    const predict = cli(['predict', '--help']).stdout;
    expect(predict).toContain('--top K');
    expect(predict).not.toContain('--force');
    expect(cli(['gc', '--help']).stdout).toContain('--keep N');
    expect(cli(['--help']).stdout).toMatch(/--top K[\s\S]*--keep N|--keep N[\s\S]*--top K/);
    expect(cli(['help', 'nope']).status).toBe(2);
    // The worker's remote is the same flag pair as run's, described for both.
    const worker = cli(['help', 'worker']).stdout;
    expect(worker).toMatch(/--remote URL .*worker: pull inputs, push results/);
    expect(worker).toContain('--remote-endpoint U');
    // The command column is as wide as the longest synopsis: every summary starts in one column.
    const usage = cli(['help']).stdout;
    const rows = usage.slice(usage.indexOf('commands:\n') + 10, usage.indexOf('\n\n', usage.indexOf('commands:'))).split('\n');
    expect(rows.length).toBeGreaterThan(10);
    expect(new Set(rows.map((line) => /^  \S.*?\s{2,}(?=\S)/.exec(line)?.[0].length)).size).toBe(1);
  });

  it('--version prints the package version', () => {
    const result = cli(['--version']);
    expect(result.status).toBe(0);
    expect(result.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
    expect(result.stderr).toBe('');
  });
});

describe('the backend', () => {
  const fashion = path.resolve(import.meta.dirname, '../fixtures/images/fashion');
  const nodeInstalled = (() => {
    try {
      createRequire(import.meta.url).resolve('@tensorflow/tfjs-node');
      return true;
    } catch {
      return false;
    }
  })();

  it('a run that loaded no TF.js says so instead of naming a backend it never used', () => {
    const file = dir.write('io-only.yaml', `name: io-only\nstages:\n  data: { uses: ingest, with: { path: ${JSON.stringify(fashion)} } }\n`);
    for (let i = 0; i < 2; i++) {
      const result = cli(['run', file, '--json', '--artifacts', dir.path('store-backend')]);
      expect(result.status, result.stderr).toBe(0);
      expect(JSON.parse(result.stdout).backend).toMatch(/^none \(/);
    }
    expect(cli(['run', file, '--artifacts', dir.path('store-backend')]).stderr).toMatch(/backend none \(/);
  });

  it.skipIf(nodeInstalled)('--backend node without tfjs-node installed is refused at start with exit 2', () => {
    const file = dir.write('io-only-2.yaml', `name: io-only\nstages:\n  data: { uses: ingest, with: { path: ${JSON.stringify(fashion)} } }\n`);
    const result = cli(['run', file, '--backend', 'node', '--artifacts', dir.path('store-refused')]);
    expect(result.status).toBe(2);
    expect(result.stderr).toContain('--backend node: @tensorflow/tfjs-node is not installed');
    expect(existsSync(dir.path('store-refused'))).toBe(false);
    const inFile = dir.write('io-only-3.yaml', `name: io-only\nbackend: node\nstages:\n  data: { uses: ingest, with: { path: ${JSON.stringify(fashion)} } }\n`);
    expect(cli(['run', inFile, '--artifacts', dir.path('store-refused')]).status).toBe(2);
    expect(existsSync(dir.path('store-refused'))).toBe(false);
  });
});

describe('the remote cache from the CLI (no server needed)', () => {
  it('cache push on a store without runs says there is nothing to push, without the AWS SDK\'s Node-version warning', () => {
    const { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: _unset, ...env } = process.env;
    const result = spawnSync(process.execPath, [bin, 'cache', 'push', '--remote', 's3://team-cache/x', '--remote-endpoint', 'http://127.0.0.1:9', '--artifacts', dir.path('no-runs')], { cwd: dir.root, encoding: 'utf8', env: { ...env, CI: 'true', AWS_ACCESS_KEY_ID: 'a', AWS_SECRET_ACCESS_KEY: 'b' } });
    expect(result.status, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/nothing to push: no run in .*no-runs/);
    expect(result.stderr).not.toMatch(/NodeVersionSupportWarning|Warning:/);
  });
});
