/**
 * The end of a scheduled retrain (scripts/retrain.sh): from the run's `--json` summary, writes
 * the Markdown job summary (status, each stage, and the metrics that changed since the previous
 * run of the pipeline: the summary's `changes`) to OUT/summary.md and appends it to
 * $GITHUB_STEP_SUMMARY when that is set; copies the run's export artifact to OUT/export.
 * Run (after `npm run build`): node dist/scripts/retrain-summary.js SUMMARY_JSON ARTIFACTS OUT
 */
import { appendFileSync, cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { RunSummary } from '../src/runtime/execute.js';

/** What `pipeline run --json` prints when the file or command line is invalid, or the store is locked. */
interface RunRefusal {
  status: 'invalid' | 'error' | 'interrupted';
  error?: { code: string; message: string };
  issues?: { file?: string; line?: number; path?: string; message: string; code: string }[];
}

function fmt(value: number): string {
  return Number.isInteger(value) ? String(value) : value.toFixed(4);
}

function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

/** The job summary in Markdown: the run's outcome, a row per stage, and the metric diff against the previous run. */
export function renderJobSummary(result: RunSummary | RunRefusal, pipelineFile: string): string {
  if (!('stages' in result)) {
    const problems = result.issues?.map((i) => `- \`${[i.file, i.line].filter(Boolean).join(':')}\` ${cell(i.message)} [${i.code}]`) ?? [`- ${cell(result.error?.message ?? 'no summary')} [${result.error?.code ?? 'unknown'}]`];
    return [`## Retrain ${pipelineFile}: ${result.status}`, '', 'Nothing was run:', ...problems, ''].join('\n');
  }
  const icon = result.status === 'succeeded' ? '✅' : result.status === 'interrupted' ? '⏹️' : '❌';
  const lines = [
    `## ${icon} Retrain ${result.pipeline}: ${result.status}`,
    '',
    `Run \`${result.run}\` in ${result.seconds.toFixed(1)} s on backend ${result.backend}; ${result.stages.filter((s) => s.status === 'cached').length} of ${result.stages.length} stages from the cache.`,
    '',
    '| stage | status | seconds | metrics / error |',
    '|---|---|---|---|',
  ];
  for (const s of result.stages) {
    const detail = s.error
      ? `${s.error.message} [${s.error.code}]`
      : Object.entries(s.metrics)
          .filter(([, v]) => typeof v === 'number')
          .slice(0, 5)
          .map(([k, v]) => `${k}=${fmt(v as number)}`)
          .join(' ');
    lines.push(`| ${s.id} | ${s.status} | ${s.status === 'ran' || s.status === 'failed' ? s.seconds.toFixed(1) : ''} | ${cell(detail)} |`);
  }
  lines.push('', '### Metrics vs the previous run', '');
  const changed = result.stages.flatMap((s) => Object.entries(s.changes ?? {}).map(([name, c]) => ({ stage: s.id, name, ...c })));
  if (!result.previous) lines.push('First run of this pipeline in this store: nothing to compare with.');
  else if (!changed.length) lines.push(`No metric changed since run \`${result.previous}\`.`);
  else {
    lines.push(`Against run \`${result.previous}\`:`, '', '| stage | metric | before | after | change |', '|---|---|---|---|---|');
    for (const c of changed) lines.push(`| ${c.stage} | ${c.name} | ${fmt(c.before)} | ${fmt(c.after)} | ${c.after >= c.before ? '+' : ''}${fmt(c.after - c.before)} |`);
  }
  return lines.join('\n') + '\n';
}

/** The export stage's entry of the run (from `runs/<id>/artifacts.json`), or undefined. */
export function exportDirOf(summary: RunSummary, artifacts: string): string | undefined {
  const stage = summary.stages.find((s) => s.uses === 'export' && (s.status === 'ran' || s.status === 'cached'));
  const file = path.join(artifacts, 'runs', summary.run, 'artifacts.json');
  if (!stage || !existsSync(file)) return undefined;
  return (JSON.parse(readFileSync(file, 'utf8')) as Record<string, string>)[stage.id];
}

function main(argv: string[]): number {
  const [summaryFile, artifacts, out, pipelineFile = ''] = argv;
  if (!summaryFile || !artifacts || !out) {
    process.stderr.write('usage: node dist/scripts/retrain-summary.js SUMMARY_JSON ARTIFACTS OUT [PIPELINE]\n');
    return 2;
  }
  let result: RunSummary | RunRefusal;
  try {
    result = JSON.parse(readFileSync(summaryFile, 'utf8'));
  } catch (error) {
    result = { status: 'error', error: { code: 'no_summary', message: `${summaryFile}: ${(error as Error).message.split('\n')[0]}` } };
  }
  const markdown = renderJobSummary(result, pipelineFile);
  mkdirSync(out, { recursive: true });
  writeFileSync(path.join(out, 'summary.md'), markdown);
  if (process.env.GITHUB_STEP_SUMMARY) appendFileSync(process.env.GITHUB_STEP_SUMMARY, markdown);
  if ('stages' in result) {
    const dir = exportDirOf(result, artifacts);
    if (dir) {
      rmSync(path.join(out, 'export'), { recursive: true, force: true });
      // The entry's own bookkeeping stays in the store; the folder is what `pipeline predict` and TF.js load.
      cpSync(dir, path.join(out, 'export'), { recursive: true, filter: (src) => path.basename(src) !== '_entry.json' });
      process.stderr.write(`retrain: export copied to ${path.join(out, 'export')}\n`);
    }
  }
  return 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) process.exitCode = main(process.argv.slice(2));
