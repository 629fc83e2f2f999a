/** Special files in a dataset tree are skipped and reported, never opened (issue 10.5). */
import { execFileSync } from 'node:child_process';
import { symlinkSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { inspectImageFile } from '../../../src/data/image.js';
import { refusedDataPath, scanFolders } from '../../../src/data/layout.js';
import { StageError } from '../../../src/runtime/errors.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';

let dir: TestDir | undefined;
afterEach(() => dir?.cleanup());

describe.skipIf(process.platform !== 'linux')('special files', () => {
  it('skips a FIFO and a link to one as special_file', async () => {
    dir = testdir({ 'a/1.png': 'x', 'b/2.png': 'y' });
    execFileSync('mkfifo', [dir.path('a/pipe.png')]);
    symlinkSync(dir.path('a/pipe.png'), dir.path('b/link.png'));
    const scan = await scanFolders(dir.root, ['.png']);
    expect(scan.candidates.map((c) => c.path)).toEqual(['a/1.png', 'b/2.png']);
    expect(scan.ignored).toEqual(expect.arrayContaining([
      { path: 'a/pipe.png', reason: 'special_file' },
      { path: 'b/link.png', reason: 'special_file' },
    ]));
  });

  it('does not open a FIFO a manifest row names', async () => {
    dir = testdir({});
    execFileSync('mkfifo', [dir.path('pipe.png')]);
    expect(await inspectImageFile(dir.path('pipe.png'))).toEqual({ ok: false, reason: 'a FIFO, not a regular file; not read' });
    expect((await inspectImageFile('/dev/zero')).ok).toBe(false);
  });

  it('refuses a root under /proc, /sys or /dev', async () => {
    for (const root of ['/proc/self', '/sys', '/dev/shm']) expect(refusedDataPath(root)).toMatch(/kernel pseudo-filesystem/);
    expect(refusedDataPath('/tmp')).toBeUndefined();
    const error = await scanFolders('/proc/self', ['.png']).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StageError);
    expect((error as StageError).code).toBe('path_special');
  });
});
