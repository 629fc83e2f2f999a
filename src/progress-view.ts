/**
 * How a run looks on stderr while it runs. On a TTY: a live bar per tracked step (decode, the
 * frozen pass, each epoch's batches) with its rate and ETA, drawn by cli-progress, while stage
 * lines and finished epoch lines print above the bars and stay on screen. Elsewhere (a file, a
 * pipe, CI): the same lines, and for a long step a plain line every `intervalMs` with its count,
 * rate and ETA. The view only renders what the runtime's observer hands it; it knows no stage.
 */
import cliProgress from 'cli-progress';
import type { ExecutionObserver } from './runtime/execute.js';
import { RESUMED_UNIT, type ProgressEvent } from './runtime/types.js';
import { stageLine, type EntryDirOf } from './render.js';

/** Options of `createProgressView`. */
export interface ProgressViewOptions {
  /** Writes human text (stderr). */
  write(text: string): void;
  /** The TTY stream to draw live bars on (stderr when it is a TTY outside CI and not `--json`); absent: plain lines. */
  tty?: NodeJS.WritableStream;
  /** Where a stage's artifact lives, to point at a `report` file in stage lines. */
  entryDir?: EntryDirOf;
  /** Without a TTY: milliseconds between two lines of one long step. Default 5000. */
  intervalMs?: number;
  /** Clock in ms (tests). Default `performance.now`. */
  now?: () => number;
  /** Redraws per second of the live bars. Default 10. */
  fps?: number;
}

/** An observer that renders a run; `close()` stops the live bars (call it however the run ends). */
export interface ProgressView extends ExecutionObserver {
  close(): void;
}

/** One tracked step being shown. */
interface Step {
  started: number;
  lastLine: number;
  lines: number;
  bar?: cliProgress.SingleBar;
}

/** Items per second since `started`, and seconds left at that rate (undefined when unknown). */
export function rateAndEta(done: number, total: number | undefined, started: number, now: number): { rate: number; eta?: number } {
  const seconds = Math.max(1e-3, (now - started) / 1000);
  const rate = done / seconds;
  return { rate, eta: total !== undefined && rate > 0 ? Math.max(0, (total - done) / rate) : undefined };
}

function formatInfo(info: ProgressEvent['info']): string {
  if (!info) return '';
  return ' ' + Object.entries(info).map(([k, v]) => `${k}=${typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(4) : v}`).join(' ');
}

function formatRate(rate: number): string {
  return rate >= 100 ? rate.toFixed(0) : rate >= 10 ? rate.toFixed(1) : rate.toFixed(2);
}

function formatSeconds(seconds: number): string {
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)}s`;
  const m = Math.floor(seconds / 60);
  return m < 60 ? `${m}m${String(Math.round(seconds % 60)).padStart(2, '0')}s` : `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}

/** The plain line of a step: `  train-head decode 120/360 (33%) 85.2/s ETA 2.8s loss=0.4`. */
export function progressLine(stageId: string, event: ProgressEvent, started: number, now: number): string {
  const { rate, eta } = rateAndEta(event.done, event.total, started, now);
  const count = event.total !== undefined ? `${event.done}/${event.total} (${Math.floor((100 * event.done) / Math.max(1, event.total))}%)` : `${event.done}`;
  const tail = event.phase === 'end' ? `in ${formatSeconds((now - started) / 1000)}` : eta !== undefined ? `ETA ${formatSeconds(eta)}` : '';
  return `  ${stageId} ${event.unit} ${count} ${formatRate(rate)}/s ${tail}${formatInfo(event.info)}`.trimEnd();
}

/** Stage lines, epoch lines and progress of a run: live bars on `tty`, periodic plain lines without. */
export function createProgressView(options: ProgressViewOptions): ProgressView {
  const now = options.now ?? (() => performance.now());
  const intervalMs = options.intervalMs ?? 5000;
  const steps = new Map<string, Step>();
  const bars = options.tty
    ? new cliProgress.MultiBar(
        {
          stream: options.tty,
          format: '  {stage} {label} [{bar}] {percentage}% | {value}/{total} | {rate}/s | ETA {eta_formatted}{info}',
          barsize: 24,
          fps: options.fps ?? 10,
          clearOnComplete: true,
          hideCursor: false,
          // Leave the terminal's autowrap on: a long stage line (a report path) wraps instead of being cut.
          // The bar lines themselves are cut to the width by cli-progress.
          linewrap: true,
          gracefulExit: false,
          etaBuffer: 50,
        },
        cliProgress.Presets.shades_classic,
      )
    : undefined;
  /** A line that stays: above the live bars while any are drawn (cli-progress prints it on its next redraw). */
  const line = (text: string) => {
    if (bars?.isActive) bars.log(text + '\n');
    else options.write(text + '\n');
  };
  const stopBarsWhenIdle = () => {
    if (bars?.isActive && steps.size === 0) {
      bars.update(); // flush the lines logged since the last redraw
      bars.stop();
    }
  };

  const onStep = (stageId: string, event: ProgressEvent) => {
    const id = `${stageId}\0${event.unit}`;
    const t = now();
    if (event.phase === 'start') {
      const step: Step = { started: t, lastLine: t, lines: 0 };
      if (bars) step.bar = bars.create(event.total ?? 0, event.done, { stage: stageId, label: event.unit, rate: '0', info: formatInfo(event.info) });
      steps.set(id, step);
      return;
    }
    const step = steps.get(id);
    if (!step) return;
    if (event.phase === 'tick') {
      if (step.bar) {
        if (event.total !== undefined && step.bar.getTotal() !== event.total) step.bar.setTotal(event.total);
        step.bar.update(event.done, { rate: formatRate(rateAndEta(event.done, event.total, step.started, t).rate), info: formatInfo(event.info) });
      } else if (t - step.lastLine >= intervalMs) {
        options.write(progressLine(stageId, event, step.started, t) + '\n');
        step.lastLine = t;
        step.lines++;
      }
      return;
    }
    // end
    steps.delete(id);
    if (step.bar) {
      bars!.remove(step.bar);
      stopBarsWhenIdle();
    } else if (step.lines > 0) {
      // A step long enough to have shown progress also says when it ended.
      options.write(progressLine(stageId, event, step.started, t) + '\n');
    }
  };

  return {
    stageStarted(planned) {
      line(`▶ ${planned.stage.id} (${planned.stage.kind}): ${planned.reasons.join('; ')}`);
    },
    stageFinished(summary) {
      line(stageLine(summary, options.entryDir));
    },
    progress(stageId, event) {
      if (event.phase) return onStep(stageId, event);
      if (event.unit === RESUMED_UNIT) line(`↻ ${stageId} resumed from epoch ${event.done}${event.total ? `/${event.total}` : ''} (${event.info?.from === 'rung' ? 'where its halving rung stopped' : 'checkpoint of an interrupted run'})`);
      else if (event.unit === 'epoch') line(`  ${stageId} epoch ${event.done}${event.total ? `/${event.total}` : ''}${formatInfo(event.info)}`);
    },
    close() {
      steps.clear();
      stopBarsWhenIdle();
    },
  };
}
