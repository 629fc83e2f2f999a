/**
 * The library API as a user's project sees it: the package is built (tsc, with declarations),
 * a temp project depends on it (`"finetune-pipeline": "file:<repo>"`, linked into its
 * node_modules as npm does for a `file:` dependency), runs the README's "Using it from Node"
 * example verbatim (the demo to completion, then a prediction of the validation dresses), and a
 * TypeScript consumer is type-checked against the emitted .d.ts.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testdir, type TestDir } from '../fixtures/testdir.js';

const root = path.resolve(import.meta.dirname, '../..');
const tsc = path.join(root, 'node_modules/typescript/bin/tsc');

/** The first ```js block under the README heading "Using it from Node". */
function readmeExample(): string {
  const readme = readFileSync(path.join(root, 'README.md'), 'utf8');
  const section = readme.split(/^## /m).find((s) => s.startsWith('Using it from Node'));
  const code = section?.match(/```js\n([\s\S]*?)```/)?.[1];
  if (!code) throw new Error('README.md has no ```js block under "## Using it from Node"');
  return code;
}

let dir: TestDir;
beforeAll(() => {
  const build = spawnSync(process.execPath, [tsc, '-p', root], { encoding: 'utf8', timeout: 180_000 });
  expect(build.status, build.stdout + build.stderr).toBe(0);
  dir = testdir();
  const project = dir.path('consumer');
  mkdirSync(path.join(project, 'node_modules'), { recursive: true });
  writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module', dependencies: { 'finetune-pipeline': `file:${root}` } }, null, 2));
  // What `npm install` does for a file: dependency: a link to the package folder.
  symlinkSync(root, path.join(project, 'node_modules/finetune-pipeline'), 'dir');
  // The demo's file and the data and base model it names (relative to the file).
  mkdirSync(path.join(project, 'pipelines'));
  cpSync(path.join(root, 'pipelines/two-phase-finetune.yaml'), path.join(project, 'pipelines/two-phase-finetune.yaml'));
  symlinkSync(path.join(root, 'data'), path.join(project, 'data'), 'dir');
  symlinkSync(path.join(root, 'models'), path.join(project, 'models'), 'dir');
}, 200_000);
afterAll(() => dir?.cleanup());

describe('finetune-pipeline as a dependency', () => {
  it('package.json exports the built entry and its types', () => {
    const manifest = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
    expect(manifest.exports['.']).toEqual({ types: './dist/src/index.d.ts', import: './dist/src/index.js' });
    for (const file of Object.values(manifest.exports['.']) as string[]) expect(existsSync(path.join(root, file)), file).toBe(true);
  });

  it('runs the README example: the demo to completion, then predicts the validation dresses', { timeout: 400_000 }, () => {
    const project = dir.path('consumer');
    writeFileSync(path.join(project, 'example.mjs'), readmeExample());
    const env: NodeJS.ProcessEnv = { ...process.env, CI: 'true' };
    delete env.PIPELINE_ARTIFACTS;
    const result = spawnSync(process.execPath, ['example.mjs'], { cwd: project, encoding: 'utf8', env, timeout: 380_000 });
    expect(result.status, result.stderr.slice(-4000)).toBe(0);
    const lines = result.stdout.trim().split('\n');
    // One line per stage as it ends (the onEvent callback), all ran on a fresh store.
    const stages = lines.slice(0, -1).map((line) => line.split(' '));
    expect(stages.map(([id]) => id).sort()).toEqual(['ingest', 'load-base', 'preprocess', 'freeze', 'train-head', 'unfreeze', 'fine-tune', 'prune', 'evaluate', 'export'].sort());
    for (const [id, status] of stages) expect(status, id).toBe('ran');
    expect(lines.at(-1)).toMatch(/^150 0 \{ label: 'dress', probability: 0\.\d+ \}$/);
    expect(existsSync(path.join(project, 'artifacts/exports/two-phase/model.json'))).toBe(true);
    expect(existsSync(path.join(project, 'artifacts/runs'))).toBe(true);
  });

  it('plans, streams stage and progress events, and throws the typed errors it exports', { timeout: 200_000 }, () => {
    const project = dir.path('consumer');
    writeFileSync(path.join(project, 'bad.yaml'), 'name: bad\nstages:\n  a:\n    uses: no-such-kind\n');
    writeFileSync(
      path.join(project, 'events.mjs'),
      `import { planPipeline, runPipeline, ValidationError, PipelineError } from 'finetune-pipeline';
const plan = await planPipeline('pipelines/two-phase-finetune.yaml');
const events = [];
const summary = await runPipeline('pipelines/two-phase-finetune.yaml', { force: ['evaluate'], onEvent: (e) => events.push(e) });
let error;
try { await runPipeline('bad.yaml'); } catch (e) { error = { validation: e instanceof ValidationError, pipeline: e instanceof PipelineError, code: e.code, line: e.issues?.[0]?.line }; }
console.log(JSON.stringify({ actions: plan.stages.map((s) => s.action), status: summary.status, events: events.map((e) => [e.type, e.stage ?? e.summary.id, e.progress?.unit, e.progress?.phase]), error }));
`,
    );
    const result = spawnSync(process.execPath, ['events.mjs'], { cwd: project, encoding: 'utf8', env: { ...process.env, CI: 'true' }, timeout: 180_000 });
    expect(result.status, result.stderr.slice(-4000)).toBe(0);
    const out = JSON.parse(result.stdout);
    expect(out.actions).toEqual(Array(10).fill('cached'));
    expect(out.status).toBe('succeeded');
    const ofEvaluate = out.events.filter(([, stage]: string[]) => stage === 'evaluate');
    expect(ofEvaluate[0]).toEqual(['stage-start', 'evaluate', null, null]);
    expect(ofEvaluate.slice(1, 3)).toEqual([['progress', 'evaluate', 'score val', 'start'], ['progress', 'evaluate', 'score val', 'tick']]);
    expect(ofEvaluate.at(-2)).toEqual(['progress', 'evaluate', 'score val', 'end']);
    expect(ofEvaluate.at(-1)).toEqual(['stage-end', 'evaluate', null, null]);
    expect(out.events.filter(([type]: string[]) => type === 'stage-end')).toHaveLength(10);
    expect(out.error).toEqual({ validation: true, pipeline: true, code: 'unknown_stage_kind', line: 4 });
  });

  it('a TypeScript consumer type-checks against the emitted declarations, and a wrong call does not', () => {
    const project = dir.path('consumer');
    writeFileSync(
      path.join(project, 'consumer.ts'),
      `import { loadExport, planPipeline, predict, runPipeline, StageError, ValidationError, type PipelineEvent, type PipelinePlan, type RunSummary } from 'finetune-pipeline';

const events: PipelineEvent[] = [];
const plan: PipelinePlan = await planPipeline('pipelines/two-phase-finetune.yaml', { set: ['stages.train-head.with.epochs=2'] });
const actions: ('run' | 'cached')[] = plan.stages.map((s) => s.action);
const summary: RunSummary = await runPipeline('pipelines/two-phase-finetune.yaml', { jobs: 2, backend: 'wasm', onEvent: (e) => void events.push(e) });
const status: 'succeeded' | 'failed' | 'interrupted' = summary.status;
for (const e of events) if (e.type === 'progress' && e.progress.phase === 'tick') console.log(e.stage, e.progress.done, e.progress.total);
const model = await loadExport('artifacts/exports/two-phase');
const labels: string[] = model.labels;
const result = await predict(model, ['a.png'], { top: 2 });
const probability: number = result.predictions[0].top[0].probability;
try {
  await runPipeline('missing.yaml');
} catch (error) {
  if (error instanceof ValidationError) console.log(error.issues[0].line, error.code);
  if (error instanceof StageError) console.log(error.details);
}
// @ts-expect-error: predict takes a list of image paths
await predict(model, 'a.png');
// @ts-expect-error: no such backend
await runPipeline('p.yaml', { backend: 'tpu' });
// @ts-expect-error: a plan's action is 'run' or 'cached'
const wrong: 'skipped' = plan.stages[0].action;
console.log(actions, status, labels, probability, wrong);
model.dispose();
`,
    );
    writeFileSync(
      path.join(project, 'tsconfig.json'),
      JSON.stringify({ compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: true, typeRoots: [path.join(root, 'node_modules/@types')], types: ['node'] }, files: ['consumer.ts'] }),
    );
    const check = spawnSync(process.execPath, [tsc, '-p', project], { cwd: project, encoding: 'utf8', timeout: 120_000 });
    expect(check.status, check.stdout + check.stderr).toBe(0);
  }, 150_000);
});
