/** A `file:` model URL is keyed by the content it names, like a path (it used to be a constant). */
import { pathToFileURL } from 'node:url';
import { afterEach, expect, it } from 'vitest';
import { hashPath, StatCache } from '../../../src/runtime/hash.js';
import { loadBase } from '../../../src/stages/load-base.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';

let dir: TestDir | undefined;
afterEach(() => dir?.cleanup());

it('keys a file: URL by the model folder it names', async () => {
  dir = testdir({ 'm/model.json': '{}', 'm/weights.bin': 'a' });
  const url = pathToFileURL(dir.path('m/model.json')).href;
  const inputs = loadBase.externalInputs!({ model: url, init: 'pretrained' }, dir.root);
  expect(inputs).toEqual([dir.path('m')]);
  const before = await hashPath(inputs[0], new StatCache());
  dir.write('m/weights.bin', 'b');
  expect(await hashPath(inputs[0], new StatCache())).not.toBe(before);
  expect(loadBase.externalInputs!({ model: pathToFileURL(dir.path('m')).href, init: 'pretrained' }, dir.root)).toEqual([dir.path('m')]);
});
