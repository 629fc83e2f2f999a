import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';
import { renderErrorCodes } from '../../scripts/gen-reference.js';
import { ERROR_CODES } from '../../src/runtime/error-codes.js';

const root = path.resolve(import.meta.dirname, '../..');
const CATALOGUE = 'src/runtime/error-codes.ts';

function sourcesUnder(dir: string): string[] {
  return readdirSync(path.join(root, dir)).flatMap((name) => {
    const rel = `${dir}/${name}`;
    if (statSync(path.join(root, rel)).isDirectory()) return sourcesUnder(rel);
    return rel.endsWith('.ts') && rel !== CATALOGUE ? [rel] : [];
  });
}
const sources = Object.fromEntries(sourcesUnder('src').map((file) => [file, readFileSync(path.join(root, file), 'utf8')]));

/** Where a code is given: `new XError('code'`, `this.error('code'`, `fail('code'`, `super('code'`, `code: 'code'`, `code = 'code'`, or the code alone on the line after `new XError(`. */
const CODE_SITES = [
  /\b(?:new [A-Z]\w*Error|error|fail|super)\(\s*'([a-z][a-z0-9_]*)'/g,
  /\bcode(?::| =) [`']([a-z][a-z0-9_]*)(?:\$\{|')/g,
];
const keys = Object.keys(ERROR_CODES);
const families = keys.filter((key) => key.endsWith('>')).map((key) => key.slice(0, key.indexOf('<')));
const inCatalogue = (code: string) => keys.includes(code) || families.some((prefix) => code.startsWith(prefix));

it('every error code given in src/ is in the catalogue', () => {
  const unknown: string[] = [];
  let found = 0;
  for (const [file, text] of Object.entries(sources)) {
    for (const pattern of CODE_SITES) {
      for (const [, code] of text.matchAll(pattern)) {
        found++;
        // Template codes (`yaml_${…}`) match their family's prefix.
        if (!inCatalogue(code)) unknown.push(`${file}: ${code}`);
      }
    }
  }
  expect(found).toBeGreaterThan(100);
  expect(unknown).toEqual([]);
});

it('every catalogue entry is used somewhere in src/', () => {
  const all = Object.values(sources).join('\n');
  const unused = keys.filter((key) => {
    if (key.endsWith('>')) return !all.includes(`\`${key.slice(0, key.indexOf('<'))}\${`);
    return !all.includes(`'${key}'`);
  });
  expect(unused).toEqual([]);
});

it('each code is snake_case and has a one-line meaning', () => {
  for (const [code, meaning] of Object.entries(ERROR_CODES)) {
    expect(code).toMatch(/^[a-z][a-z0-9]*(_[a-z0-9]+)*(_<[a-z]+>)?$/);
    expect(meaning, code).toMatch(/^[^\n]{10,}$/);
  }
});

it('the merged codes are gone (see the CHANGELOG)', () => {
  for (const old of ['no_head', 'class_mismatch']) {
    expect(keys).not.toContain(old);
    expect(Object.values(sources).join('\n')).not.toContain(`'${old}'`);
  }
});

it('docs/error-codes.md matches the catalogue (run `npx tsx scripts/gen-reference.ts` after changing it)', () => {
  expect(readFileSync(path.join(root, 'docs/error-codes.md'), 'utf8')).toBe(renderErrorCodes());
});
