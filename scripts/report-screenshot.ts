/**
 * Opens a run report (`pipeline report`) in headless Chromium (Debian's `chromium`, driven by
 * playwright-core, a devDependency) with a new empty profile, collects console errors, page
 * errors and failed requests, reads what rendered (chart SVGs, thumbnails, headings) and takes a
 * full-page screenshot. test/e2e/report.test.ts uses it; by hand:
 *
 *   npx tsx scripts/report-screenshot.ts artifacts/runs/<run-id>/report.html /tmp/report.png
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

/** The flags the report is checked with: no sandbox (root in CI), no GPU, nothing fetched in the background. */
export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** What the page showed. */
export interface PageFacts {
  /** Console errors, page errors and failed requests, in order. */
  problems: string[];
  /** Each `figure.chart`: its name, how many SVG marks it drew and its rendered width. */
  charts: { name: string | null; marks: number; width: number }[];
  /** Natural width of each thumbnail (0 when its data: URI did not decode). */
  thumbnails: number[];
  headings: string[];
}

/** `CHROMIUM_PATH`, else `chromium` on PATH, else undefined. */
export function findChromium(): string | undefined {
  if (process.env.CHROMIUM_PATH) return process.env.CHROMIUM_PATH;
  try {
    return execFileSync('which', ['chromium'], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Opens `html`, screenshots it to `png` and returns what rendered. */
export async function screenshotReport(html: string, png: string, executablePath: string): Promise<PageFacts> {
  const { chromium } = await import('playwright-core');
  const profile = mkdtempSync(path.join(tmpdir(), 'report-chromium-'));
  const context = await chromium.launchPersistentContext(profile, { executablePath, headless: true, args: CHROMIUM_ARGS, viewport: { width: 1200, height: 900 } });
  try {
    const page = await context.newPage();
    const problems: string[] = [];
    page.on('console', (message) => {
      if (message.type() === 'error') problems.push(`console: ${message.text()}`);
    });
    page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
    page.on('requestfailed', (request) => problems.push(`request failed: ${request.url()}`));
    await page.goto(pathToFileURL(path.resolve(html)).href, { waitUntil: 'load' });
    const charts = await page.$$eval('figure.chart', (figures) =>
      figures.map((f) => ({ name: f.getAttribute('data-chart'), marks: f.querySelectorAll('svg path, svg rect, svg line').length, width: f.querySelector('svg')?.getBoundingClientRect().width ?? 0 })),
    );
    const thumbnails = await page.$$eval('.thumb img', (images) => images.map((img) => (img as HTMLImageElement).naturalWidth));
    const headings = await page.locator('h2').allTextContents();
    await page.screenshot({ path: png, fullPage: true });
    return { problems, charts, thumbnails, headings };
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const [html, png] = process.argv.slice(2);
  const executable = findChromium();
  if (!html || !png) {
    console.error('usage: npx tsx scripts/report-screenshot.ts REPORT.html OUT.png');
    process.exit(2);
  }
  if (!executable) {
    console.error('chromium is not installed (apt-get install -y chromium), or set CHROMIUM_PATH');
    process.exit(2);
  }
  const facts = await screenshotReport(html, png, executable);
  console.log(JSON.stringify({ png, ...facts }));
  process.exit(facts.problems.length ? 1 : 0);
}
