/**
 * The run's progress view: live cli-progress bars on a (fake) TTY with rate and ETA, finished
 * epoch and stage lines kept above them; plain periodic lines without a TTY.
 */
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createProgressView, progressLine, rateAndEta } from '../../src/progress-view.js';
import { createTracker } from '../../src/runtime/progress.js';
import type { StageSummary } from '../../src/runtime/execute.js';

/** A writable that says it is a TTY, 100 columns wide, and keeps everything written to it. */
class FakeTty extends Writable {
  isTTY = true;
  columns = 100;
  text = '';
  override _write(chunk: Buffer, _encoding: string, callback: () => void) {
    this.text += chunk.toString();
    callback();
  }
}

const finished: StageSummary = { id: 'train-head', uses: 'train-head', status: 'ran', key: 'k', seconds: 1.5, metrics: { accuracy: 0.9 } };
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
// ANSI control sequences (cursor moves, line clears) as cli-progress writes them.
const strip = (text: string) => text.replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1b[78]/g, '');

describe('progress view on a TTY', () => {
  it('draws a bar per step with count, rate and ETA, and keeps epoch and stage lines on screen', async () => {
    const tty = new FakeTty();
    let written = '';
    const view = createProgressView({ write: (text) => void (written += text), tty, fps: 50 });
    const emit = (event: Parameters<NonNullable<typeof view.progress>>[1]) => view.progress!('train-head', event);
    const epoch = createTracker(emit, 'epoch 1/2', 10);
    for (let i = 0; i < 4; i++) {
      epoch.tick(1, { loss: 0.5 });
      await sleep(30);
    }
    const drawn = strip(tty.text);
    expect(drawn).toMatch(/train-head epoch 1\/2 \[[█░]+\] \d+% \| 4\/10 \| [\d.]+\/s \| ETA \S+ loss=0\.5000/);
    expect(tty.text).toMatch(/\x1b\[/); // drawn with cursor control, not appended lines
    epoch.done();
    emit({ unit: 'epoch', done: 1, total: 2, info: { loss: 0.4, acc: 0.75 } });
    view.stageFinished!(finished);
    await sleep(60);
    view.close();
    const all = strip(tty.text + written);
    // The finished lines stay (printed once the bar is gone or above the live bars).
    expect(all).toContain('  train-head epoch 1/2 loss=0.4000 acc=0.7500\n');
    expect(all).toContain('✓ train-head ran 1.5s  accuracy=0.9000\n');
  });

  it('stops redrawing once closed (no timer keeps the process alive)', async () => {
    const tty = new FakeTty();
    const view = createProgressView({ write: () => {}, tty, fps: 50 });
    createTracker((event) => view.progress!('s', event), 'decode', 100).tick(5);
    view.close();
    const length = tty.text.length;
    await sleep(80);
    expect(tty.text.length).toBe(length);
  });
});

describe('progress view without a TTY', () => {
  it('writes a plain line per interval with count, percent, rate and ETA, and an end line for a long step', () => {
    let clock = 0;
    let written = '';
    const view = createProgressView({ write: (text) => void (written += text), intervalMs: 5000, now: () => clock });
    const step = createTracker((event) => view.progress!('preprocess', event), 'decode', 400);
    for (let i = 1; i <= 400; i++) {
      clock = i * 25; // 40 images/s: 10 s in all
      step.tick();
    }
    step.done();
    const lines = written.trimEnd().split('\n');
    expect(lines).toEqual([
      '  preprocess decode 200/400 (50%) 40.0/s ETA 5.0s',
      '  preprocess decode 400/400 (100%) 40.0/s ETA 0.0s',
      '  preprocess decode 400/400 (100%) 40.0/s in 10s',
    ]);
    expect(written).not.toMatch(/\x1b/);
  });

  it('shows a short step only by its stage lines, and epoch lines always', () => {
    let written = '';
    const view = createProgressView({ write: (text) => void (written += text), now: () => 0 });
    const step = createTracker((event) => view.progress!('fine-tune', event), 'epoch 1/1', 2);
    step.tick();
    step.tick();
    step.done();
    view.progress!('fine-tune', { unit: 'epoch', done: 1, total: 1, info: { loss: 0.25 } });
    view.progress!('fine-tune', { unit: 'resumed', done: 3, total: 5 });
    expect(written).toBe('  fine-tune epoch 1/1 loss=0.2500\n↻ fine-tune resumed from epoch 3/5 (checkpoint of an interrupted run)\n');
  });
});

describe('rate and ETA', () => {
  it('counts per second since the start and the time left at that rate', () => {
    expect(rateAndEta(50, 200, 0, 10_000)).toEqual({ rate: 5, eta: 30 });
    expect(rateAndEta(3, undefined, 0, 1000)).toEqual({ rate: 3, eta: undefined });
    expect(progressLine('s', { unit: 'frozen pass', done: 30, phase: 'tick' }, 0, 2000)).toBe('  s frozen pass 30 15.0/s');
  });
});
