import { readFileSync } from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';
import { renderReference } from '../../scripts/gen-reference.js';

it('docs/pipeline-reference.md matches the schemas (run `npx tsx scripts/gen-reference.ts` after changing one)', () => {
  const committed = readFileSync(path.resolve(import.meta.dirname, '../../docs/pipeline-reference.md'), 'utf8');
  expect(committed).toBe(renderReference());
});
