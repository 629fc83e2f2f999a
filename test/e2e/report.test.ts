/**
 * `pipeline report` and `pipeline show` through the built CLI on a real demo run (and a second
 * run that changes prune's epochs, so there is a previous run to diff against), and the report
 * page opened in headless Chromium (Debian's `chromium`, driven by playwright-core): it must
 * render with no console error, hold the charts' SVGs and decoded thumbnails, and screenshot.
 * Without chromium the browser test skips with a message, except under CI (`CI=true` or
 * `BROWSER_TESTS_REQUIRED=1`), where it fails: `.ci/services.sh` installs chromium.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findChromium, screenshotReport } from '../../scripts/report-screenshot.js';
import { testdir, type TestDir } from '../fixtures/testdir.js';

const root = path.resolve(import.meta.dirname, '../..');
const bin = path.join(root, 'bin/pipeline.js');
const CHARTS = ['curves-loss', 'curves-accuracy', 'confusion-evaluate', 'model-size', 'timeline'];
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

const chromium = findChromium();
const browserRequired = process.env.CI === 'true' || process.env.BROWSER_TESTS_REQUIRED === '1';
if (!chromium && !browserRequired) console.warn('report.test.ts: chromium is not installed (apt-get install -y chromium): the browser test is skipped');

let dir: TestDir;
let artifacts: string;

function cli(args: string[]) {
  return spawnSync(process.execPath, [bin, ...args, '--artifacts', artifacts], { cwd: root, encoding: 'utf8', env: { ...process.env, CI: 'true' }, timeout: 170_000 });
}

beforeAll(() => {
  dir = testdir();
  artifacts = dir.path('artifacts');
  for (const extra of [[], ['--set', 'stages.prune.with.epochs=3']]) {
    const result = cli(['run', 'pipelines/two-phase-finetune.yaml', '--json', ...extra]);
    expect(result.status, result.stderr.slice(-3000)).toBe(0);
  }
}, 300_000);
afterAll(() => dir?.cleanup());

interface ReportJson {
  run: string;
  pipeline: string;
  html: string;
  markdown: string;
  charts: { name: string; png: string }[];
  notes: string[];
}

describe('pipeline report', () => {
  let report: ReportJson;
  beforeAll(() => {
    const result = cli(['report', '--json']);
    expect(result.status, result.stderr).toBe(0);
    report = JSON.parse(result.stdout);
  });

  it('writes report.html, report.md and a PNG per chart into the latest run folder', () => {
    const runs = JSON.parse(cli(['runs', '--json']).stdout).runs as { run: string }[];
    expect(report.run).toBe(runs[0].run);
    expect(report.html).toBe(path.join(artifacts, 'runs', report.run, 'report.html'));
    expect(report.markdown).toBe(path.join(artifacts, 'runs', report.run, 'report.md'));
    expect(report.charts.map((c) => c.name)).toEqual(CHARTS);
    for (const chart of report.charts) {
      expect(path.dirname(chart.png)).toBe(path.join(artifacts, 'runs', report.run, 'report-assets'));
      expect(readFileSync(chart.png).subarray(0, 8).equals(PNG_SIGNATURE)).toBe(true);
    }
    // The new prune writes history.json: every training stage has a curve, nothing is missing.
    expect(report.notes).toEqual([]);
    const html = readFileSync(report.html, 'utf8');
    expect(html).not.toMatch(/<script|src="https?:|href="https?:/); // self-contained, no script
    expect(html).toContain('Misclassified (');
    expect(html).toMatch(/<img src="data:image\/png;base64,/);
  });

  it('the Markdown has the key metrics, the diff against the previous run and links to the PNGs', () => {
    const md = readFileSync(report.markdown, 'utf8');
    expect(md).toMatch(/\| evaluate \| accuracy \| 0\.\d{4} \|/);
    expect(md).toContain('### Changes since the previous run');
    expect(md).toMatch(/\| prune \| epochs\\_run \| 2 \| 3 \| \+1 \|/);
    for (const name of CHARTS) expect(md).toContain(`(report-assets/${name}.png)`);
  });

  it('prints the page path on stdout; an older run by id; --out elsewhere', () => {
    const runs = JSON.parse(cli(['runs', '--json']).stdout).runs as { run: string }[];
    const plain = cli(['report', runs[1].run]);
    expect(plain.status, plain.stderr).toBe(0);
    expect(plain.stdout).toBe(`${path.join(artifacts, 'runs', runs[1].run, 'report.html')}\n`);
    const out = dir.path('elsewhere/demo.html');
    const moved = cli(['report', '--out', out]);
    expect(moved.status, moved.stderr).toBe(0);
    expect(moved.stdout.trim()).toBe(out);
    expect(existsSync(dir.path('elsewhere/demo.md'))).toBe(true);
    expect(existsSync(dir.path('elsewhere/demo-assets/timeline.png'))).toBe(true);
  });

  it('an unknown run is exit 2 with a hint; no store is exit 2', () => {
    const unknown = cli(['report', '20990101-000000000-zzzz', '--json']);
    expect(unknown.status).toBe(2);
    expect(JSON.parse(unknown.stdout).error.code).toBe('run_not_found');
    expect(unknown.stderr).toMatch(/pipeline runs/);
    const empty = spawnSync(process.execPath, [bin, 'report', '--artifacts', dir.path('none')], { encoding: 'utf8' });
    expect(empty.status).toBe(2);
    expect(empty.stderr).toMatch(/no runs in the artifact store .*\[no_runs\]/);
    expect(empty.stderr).not.toMatch(/at .*\.js:\d+/); // no stack trace
  });

  it.skipIf(!chromium && !browserRequired)('renders in headless chromium with no console error, with the charts as SVG', { timeout: 120_000 }, async () => {
    expect(chromium, 'chromium is required under CI: .ci/services.sh installs it (apt-get install -y chromium)').toBeTruthy();
    const screenshot = process.env.REPORT_SCREENSHOT ?? dir.path('report.png');
    const facts = await screenshotReport(report.html, screenshot, chromium!);
    expect(facts.problems).toEqual([]);
    expect(facts.charts.map((c) => c.name)).toEqual(CHARTS);
    for (const chart of facts.charts) {
      expect(chart.marks, chart.name!).toBeGreaterThan(3);
      expect(chart.width, chart.name!).toBeGreaterThan(100);
    }
    expect(facts.thumbnails.length).toBeGreaterThan(0);
    for (const width of facts.thumbnails) expect(width).toBeGreaterThan(0); // every data: URI decodes
    expect(facts.headings).toEqual(expect.arrayContaining(['Key metrics', 'Training curves', 'Evaluation: evaluate on val', 'Model size', 'Ingest: ingest', 'Stage timeline']));
    expect(statSync(screenshot).size).toBeGreaterThan(50_000);
  });
});

describe('pipeline show', () => {
  it('prints a stage\'s artifact dir, its files, metrics and history across runs', () => {
    const result = cli(['show', 'prune', '--json']);
    expect(result.status, result.stderr).toBe(0);
    const view = JSON.parse(result.stdout);
    expect(view).toMatchObject({ stage: 'prune', uses: 'prune', pipeline: 'two-phase-finetune', status: 'ran' });
    expect(view.artifact.dir).toBe(path.join(artifacts, 'cache', view.key));
    expect(view.artifact.present).toBe(true);
    expect(view.artifact.files.map((f: { name: string }) => f.name)).toEqual(['history.json', 'model.json', 'summary.json', 'weights.bin']);
    for (const f of view.artifact.files) expect(statSync(f.path).size).toBe(f.bytes);
    expect(view.history.map((h: { metrics: { epochs_run: number } }) => h.metrics.epochs_run)).toEqual([3, 2]);
    expect(view.history[0].key).not.toBe(view.history[1].key);

    const human = cli(['show', 'prune']);
    expect(human.status).toBe(0);
    expect(human.stdout).toContain(`artifact: ${view.artifact.dir}`);
    expect(human.stdout).toMatch(/history \(2 runs, newest first\):/);
    expect(human.stdout).toMatch(/history\.json\s+[\d,]+ B/);
  });

  it('FILE picks the pipeline; an unknown stage is exit 2 with a suggestion', () => {
    const withFile = cli(['show', 'evaluate', 'pipelines/two-phase-finetune.yaml', '--json']);
    expect(withFile.status, withFile.stderr).toBe(0);
    expect(JSON.parse(withFile.stdout).history).toHaveLength(2);
    const unknown = cli(['show', 'prun']);
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toMatch(/no run of any pipeline .* has a stage 'prun' \(did you mean 'prune'\?\).*\[stage_not_found\]/);
    const other = cli(['show', 'prune', 'pipelines/feature-extraction.yaml']);
    expect(other.status).toBe(2);
    expect(other.stderr).toMatch(/no run of pipeline 'feature-extraction'/);
  });
});
