import { existsSync, readdirSync, readFileSync } from 'node:fs';
import YAML from 'yaml';
import path from 'node:path';
import { expect, it } from 'vitest';
import { renderReference } from '../../scripts/gen-reference.js';

it('docs/pipeline-reference.md matches the schemas (run `npx tsx scripts/gen-reference.ts` after changing one)', () => {
  const committed = readFileSync(path.resolve(import.meta.dirname, '../../docs/pipeline-reference.md'), 'utf8');
  expect(committed).toBe(renderReference());
});

const root = path.resolve(import.meta.dirname, '../..');
const read = (file: string) => readFileSync(path.join(root, file), 'utf8');

it('every link in README, CHANGELOG and docs/ stays inside the repository and names a file that exists', () => {
  const files = ['README.md', 'CHANGELOG.md', ...readdirSync(path.join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
  expect(files).toContain('docs/contract.md');
  for (const file of files) {
    const text = read(file);
    expect(text, file).not.toMatch(/shared\/CONTRACT\.md/);
    for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      expect(target, `${file}: ${target}`).not.toMatch(/^[a-z]+:/i);
      const resolved = path.resolve(root, path.dirname(file), target.split('#')[0]);
      expect(resolved.startsWith(root + path.sep), `${file}: ${target} leaves the repository`).toBe(true);
      expect(existsSync(resolved), `${file}: ${target} does not exist`).toBe(true);
    }
  }
});

it("the README's demo table names the demo's real stage ids", () => {
  const demo = YAML.parse(read('pipelines/two-phase-finetune.yaml')) as { stages: Record<string, { uses: string }> };
  const section = read('README.md').split('## What the demo does')[1].split('\n## ')[0];
  const rows = [...section.matchAll(/^\| `([a-z-]+)` \| ([a-z-]+) \|/gm)].map(([, id, kind]) => [id, kind]);
  expect(rows).toEqual(Object.entries(demo.stages).map(([id, stage]) => [id, stage.uses]));
});

it('the README documents the nsfwjs decode command', () => {
  expect(read('README.md')).toMatch(/npx tsx scripts\/decode-nsfwjs\.ts --out /);
});

it('the command tables of README and docs/contract.md are one table each and name every command', async () => {
  const { main } = await import('../../src/cli.js');
  let usage = '';
  await main(['help'], { registry: {} as never, stdout: (t) => (usage += t), stderr: () => {}, env: {}, isTTY: false });
  const commands = usage.split('commands:\n')[1].split('\n\n')[0].split('\n').map((line) => line.trim().split(' ')[0]);
  expect(commands).toContain('worker');
  for (const [file, heading] of [['README.md', '## Commands'], ['docs/contract.md', '| command | does |']] as const) {
    const after = read(file).split(heading)[1];
    // A blank line ends a Markdown table: every row must follow the header without one.
    const table = after.slice(after.indexOf('| command | does |') >= 0 ? after.indexOf('| command | does |') : 0).split('\n');
    const start = table.findIndex((line) => line.startsWith('|'));
    const rows = table.slice(start, table.findIndex((line, i) => i > start && !line.startsWith('|')));
    for (const command of commands) expect(rows.some((row) => row.includes(`\`pipeline ${command}`)), `${file}: pipeline ${command} is not in the command table`).toBe(true);
  }
});
