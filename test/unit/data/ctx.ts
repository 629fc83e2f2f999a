/**
 * Test helpers for the data stages: a temp-dir fixture, the image fixtures, and (re-exported)
 * the shared hand-built StageContext.
 */
import { cp, mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'fixtures', 'images');
export const FASHION = join(FIXTURES, 'fashion');
export const BAD = join(FIXTURES, 'bad');

/** A temp directory; call `remove()` in afterEach. */
export async function testdir(): Promise<{ path: string; remove(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), 'data-test-'));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}

/** Copies the Fashion-MNIST fixture (3 classes x 8 PNGs) to `target`. */
export async function copyFashion(target: string): Promise<void> {
  await mkdir(target, { recursive: true });
  await cp(FASHION, target, { recursive: true });
}

export { makeStageContext as makeContext, runStage, inputFrom, type TestStageContext as TestContext } from '../../fixtures/stage-context.js';

/** Ingest params with schema defaults, as the runtime would resolve them. */
export function ingestParams(overrides: Record<string, unknown>) {
  return { split: { val: 0.2, test: 0 }, strict: false, extensions: ['.jpg', '.jpeg', '.png', '.webp', '.gif', '.tif', '.tiff', '.avif'], ...overrides };
}
