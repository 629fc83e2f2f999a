/** A full disk names where it happened (issue 10.5): `ENOSPC … write` from a write carries no path. */
import { afterEach, expect, it } from 'vitest';
import { describeError } from '../../../src/runtime/errors.js';
import { runPipeline } from '../../../src/runtime/run.js';
import type { StageDefinition, StageRegistry } from '../../../src/runtime/types.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';

let dir: TestDir | undefined;
afterEach(() => dir?.cleanup());

/** What fs.write throws on a full disk: errno and code, and no `path`. */
function diskFull(): NodeJS.ErrnoException {
  return Object.assign(new Error('ENOSPC: no space left on device, write'), { errno: -28, code: 'ENOSPC', syscall: 'write' });
}

const filler: StageDefinition<Record<string, never>> = {
  kind: 'filler',
  version: 1,
  description: 'fails as a write on a full disk does',
  paramsSchema: { type: 'object', additionalProperties: false, properties: {} },
  consumes: [],
  provides: ['value'],
  async run() {
    throw diskFull();
  },
};

it('describeError places a system error without a path, and leaves one with a path as it is', () => {
  expect(describeError(diskFull(), '/store/tmp/x').message).toBe('ENOSPC: no space left on device, write (writing under /store/tmp/x)');
  const open = Object.assign(new Error("ENOSPC: no space left on device, open '/a/b'"), { errno: -28, code: 'ENOSPC', path: '/a/b' });
  expect(describeError(open, '/store').message).toBe("ENOSPC: no space left on device, open '/a/b'");
});

it("a stage failing with ENOSPC names the store folder it wrote to in the run summary", async () => {
  dir = testdir({ 'p.yaml': 'name: full\nstages:\n  fill: { uses: filler }\n' });
  const registry = { filler } as unknown as StageRegistry;
  const summary = await runPipeline({ file: dir.path('p.yaml'), registry, artifacts: dir.path('artifacts'), overrides: [] });
  const error = summary.stages[0].error!;
  expect(error.code).toBe('enospc');
  expect(error.message).toMatch(/no space left on device, write \(writing under .*artifacts/);
});
