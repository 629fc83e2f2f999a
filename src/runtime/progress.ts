/**
 * The counter behind `StageContext.track`: turns `tick()`/`done()` into `start`/`tick`/`end`
 * progress events. Knows nothing about how they are shown (the CLI draws bars, the library API
 * hands them on).
 */
import type { ProgressEvent, ProgressTracker } from './types.js';

/** A tracker for the step `label` of `total` items that sends its events to `emit`. */
export function createTracker(emit: (event: ProgressEvent) => void, label: string, total?: number): ProgressTracker {
  let done = 0;
  let ended = false;
  let info: Record<string, number | string> | undefined;
  const event = (phase: 'start' | 'tick' | 'end'): ProgressEvent => ({ unit: label, done, ...(total !== undefined ? { total } : {}), ...(info ? { info } : {}), phase });
  emit(event('start'));
  return {
    tick(n = 1, facts) {
      if (ended) return;
      done += n;
      if (facts) info = facts;
      emit(event('tick'));
    },
    done() {
      if (ended) return;
      ended = true;
      emit(event('end'));
    },
  };
}
