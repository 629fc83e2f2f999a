/**
 * The scheduled-retraining CI files parse and do what the README says: a schedule and a manual
 * trigger, `npm ci`, the artifact store restored from and saved to the CI cache, the retrain
 * script (which fails the job on a gate), the export and report uploaded, even after a failure.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';

const root = path.resolve(import.meta.dirname, '../..');
const load = (file: string) => parse(readFileSync(path.join(root, file), 'utf8'), { strict: true, uniqueKeys: true });

interface Step {
  name?: string;
  uses?: string;
  run?: string;
  if?: string;
  with?: Record<string, string>;
}

describe('.github/workflows/retrain.yml', () => {
  const workflow = load('.github/workflows/retrain.yml');
  const steps: Step[] = workflow.jobs.retrain.steps;
  const index = (match: (s: Step) => boolean) => {
    const i = steps.findIndex(match);
    expect(i, 'step not found').toBeGreaterThanOrEqual(0);
    return i;
  };

  it('runs on a schedule and by hand', () => {
    expect(workflow.on.schedule[0].cron).toMatch(/^(\S+\s+){4}\S+$/);
    expect(workflow.on).toHaveProperty('workflow_dispatch');
  });

  it('installs with npm ci, restores the store, retrains, then saves the store and uploads export and report', () => {
    const install = index((s) => s.run === 'npm ci');
    const restore = index((s) => s.uses?.startsWith('actions/cache/restore@') ?? false);
    const retrain = index((s) => s.run?.includes('scripts/retrain.sh') ?? false);
    const save = index((s) => s.uses?.startsWith('actions/cache/save@') ?? false);
    const uploads = steps.filter((s) => s.uses?.startsWith('actions/upload-artifact@'));
    expect(install).toBeLessThan(restore);
    expect(restore).toBeLessThan(retrain);
    expect(retrain).toBeLessThan(save);
    // The store path is the script's ARTIFACTS; a new generation per run, restored by prefix.
    expect(workflow.jobs.retrain.env.ARTIFACTS).toContain(steps[restore].with!.path);
    expect(steps[save].with!.path).toBe(steps[restore].with!.path);
    expect(steps[save].with!.key).toBe(steps[restore].with!.key);
    expect(steps[restore].with!['restore-keys'].trim()).toBe('pipeline-store-');
    // A failed gate fails the retrain step; the store, export and report are still kept.
    for (const step of [steps[save], ...uploads]) expect(step.if, step.name).toMatch(/!cancelled\(\)|always\(\)/);
    const uploaded = uploads.map((s) => s.with!.path).join('\n');
    expect(uploaded).toContain('retrain-out/export');
    expect(uploaded).toContain('retrain-out/report');
    expect(workflow.jobs.retrain.env.OUT).toContain('retrain-out');
    expect(steps.map((s) => s.name)).toEqual(expect.arrayContaining(['Restore the artifact store', 'Save the artifact store', 'Upload the export', 'Upload the report and summary']));
  });
});

describe('examples/ci/.gitlab-ci.yml', () => {
  const job = load('examples/ci/.gitlab-ci.yml').retrain;

  it('runs on a schedule and by hand, caches the store, runs the same script and keeps the outputs', () => {
    expect(job.rules.map((r: { if: string }) => r.if)).toEqual(['$CI_PIPELINE_SOURCE == "schedule"', '$CI_PIPELINE_SOURCE == "web"']);
    expect(job.script).toEqual(['npm ci', 'scripts/retrain.sh']);
    expect(job.variables.ARTIFACTS).toContain(job.cache.paths[0].replace(/\/$/, ''));
    expect(job.cache.when).toBe('always');
    expect(job.artifacts.when).toBe('always');
    expect(job.artifacts.paths).toEqual(expect.arrayContaining(['retrain-out/export/', 'retrain-out/report/', 'retrain-out/summary.md']));
  });
});
