/**
 * File -> `PipelineFile` -> `ResolvedPipeline`: parse YAML with a source map, apply `--set`
 * overrides, validate against the JSON Schemas, check the graph, apply defaults. Every problem
 * is collected and returned at once; nothing here throws on bad input.
 */
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import YAML, { isMap, isPair, isScalar, isSeq, LineCounter, type Document, type Node } from 'yaml';
import type { ValidationIssue } from './errors.js';
import { ancestors, findCycle, topologicalOrder } from './graph.js';
import { checkStageMatrix, combinationIndices, combinations, expandMatrix, type MatrixInfo, type TemplateStage } from './matrix.js';
import { compilePipelineValidator, compileStageValidator, describeAjvErrors } from './schema.js';
import { didYouMean } from './suggest.js';
import type { ArtifactType, Json, StageDefinition, StageRegistry } from './types.js';

/** Pipeline files larger than this are refused before parsing. */
export const MAX_FILE_BYTES = 1024 * 1024;
/** Aliases beyond this are refused (billion-laughs protection). */
export const MAX_ALIAS_COUNT = 100;

/** What the YAML says, validated but before graph checks and defaults. */
export interface PipelineFile {
  name: string;
  description?: string;
  seed?: number;
  backend?: string;
  stages: Record<string, { uses: string; needs?: string[]; with?: Record<string, unknown>; matrix?: Record<string, unknown[]>; description?: string }>;
}

/** A stage with defaults applied and its graph facts precomputed. */
export interface ResolvedStage {
  id: string;
  kind: string;
  definition: StageDefinition;
  /** Params with schema defaults applied. */
  params: Record<string, unknown>;
  needs: string[];
  /** All upstream stages, nearest first. */
  ancestors: string[];
  /** 1-based line of the stage in the file, for messages. */
  line?: number;
  /** A branch of a sweep: the stage id in the file it was expanded from (absent otherwise). */
  template?: string;
  /** A branch's matrix coordinates, axis label -> value (`{ blocks: 2, lr: 0.0001 }`). */
  coords?: Record<string, Json>;
}

export interface ResolvedPipeline {
  file: string;
  baseDir: string;
  name: string;
  seed: number;
  backend: string;
  /** Stages in topological order. */
  stages: ResolvedStage[];
  /** stage id -> needs, in file order. */
  needs: Map<string, string[]>;
  /** The sweeps (`matrix:`) and the branches they made; absent when nothing is swept. */
  matrix?: MatrixInfo;
}

export type LoadResult =
  | { ok: true; pipeline: ResolvedPipeline; warnings: ValidationIssue[] }
  | { ok: false; issues: ValidationIssue[] };

/** Loads and validates a pipeline file; `overrides` are `--set path=value` strings. */
export function loadPipeline(file: string, registry: StageRegistry, overrides: string[] = []): LoadResult {
  const text = readSource(file);
  if (typeof text !== 'string') return { ok: false, issues: [text] };
  return loadPipelineText(text, file, registry, overrides);
}

function readSource(file: string): string | ValidationIssue {
  try {
    const info = statSync(file);
    if (!info.isFile()) return { code: 'not_a_file', path: '', file, message: `${file} is not a file; pass a pipeline YAML file` };
    if (info.size > MAX_FILE_BYTES)
      return { code: 'file_too_large', path: '', file, message: `${file} is ${info.size} bytes; pipeline files are limited to ${MAX_FILE_BYTES} bytes` };
    return readFileSync(file, 'utf8');
  } catch (error) {
    return { code: 'file_unreadable', path: '', file, message: `cannot read ${file}: ${(error as Error).message}` };
  }
}

/** Same as `loadPipeline` on text already read (tests use it directly). */
export function loadPipelineText(text: string, file: string, registry: StageRegistry, overrides: string[] = []): LoadResult {
  const lineCounter = new LineCounter();
  if (/[\x00-\x08\x0e-\x1a]/.test(text.slice(0, 8192)))
    return { ok: false, issues: [{ code: 'binary_file', path: '', file, message: 'this is a binary file, not a YAML pipeline file' }] };
  // A NUL anywhere (not only in the first 8 KiB the check above looks at): YAML forbids it, and a
  // string holding one would reach paths and shell-visible names cut short.
  const nul = text.indexOf('\0');
  if (nul !== -1) {
    const before = text.slice(0, nul).split(/\r?\n/);
    const line = before.length;
    const col = before[line - 1].length + 1;
    const snippet = text.split(/\r?\n/)[line - 1].replaceAll('\0', '\\0');
    return { ok: false, issues: [{ code: 'nul_byte', path: '', file, line, col, snippet, message: 'a NUL byte (\\0) is not allowed in a pipeline file; the file is binary or corrupt, remove the byte' }] };
  }
  // merge: `<<: *defaults` works as users of YAML anchors expect.
  const doc = YAML.parseDocument(text, { lineCounter, uniqueKeys: true, prettyErrors: false, merge: true });
  const lines = text.split(/\r?\n/);
  const at = (offset: number | undefined): Pick<ValidationIssue, 'line' | 'col' | 'snippet'> => {
    if (offset === undefined) return {};
    const { line, col } = lineCounter.linePos(offset);
    return { line, col, snippet: lines[line - 1] };
  };
  const issues: ValidationIssue[] = [];
  for (const error of doc.errors) {
    const first = error.message.split('\n')[0].replace(/ at line \d+, column \d+:?$/, '');
    issues.push({ code: `yaml_${error.code.toLowerCase()}`, path: '', file, message: `YAML: ${explainYamlError(error.code, first, text, error.pos[0])}`, ...at(error.pos[0]) });
  }
  if (issues.length) return { ok: false, issues };
  if (doc.contents === null || (isScalar(doc.contents) && doc.contents.value === null)) {
    return { ok: false, issues: [{ code: 'empty_file', path: '', file, message: 'the file is empty; a pipeline needs `name:` and `stages:` (see pipelines/ for examples)' }] };
  }

  // What each `--set` replaced: a problem at or under one of these paths is the command line's,
  // not the file's (the overriding node has no place in the file; its parent's line would mislead).
  const overridden: { segments: string[]; text: string }[] = [];
  for (const override of overrides) {
    const issue = applyOverride(doc, override);
    if (issue) issues.push(issue);
    else overridden.push({ segments: override.slice(0, override.indexOf('=')).split('.'), text: override });
  }
  if (issues.length) return { ok: false, issues };

  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
  } catch (error) {
    return {
      ok: false,
      issues: [{ code: 'yaml_alias_bomb', path: '', file, message: `YAML: ${(error as Error).message}; use at most ${MAX_ALIAS_COUNT} alias expansions` }],
    };
  }

  const locate = (instancePath: string[], key = false) => at(offsetOf(doc, instancePath, key));
  const baseDir = path.dirname(path.resolve(file));
  /** Where an issue at `segments` belongs: the `--set` that wrote that value, or the file's line. */
  const place = (issue: { message: string }, segments: string[], key = false): { file: string; message: string } & Pick<ValidationIssue, 'line' | 'col' | 'snippet'> => {
    const source = overridden.filter((o) => o.segments.length <= segments.length && o.segments.every((s, i) => s === segments[i])).at(-1);
    return source ? { file: '--set', message: `--set ${source.text}: ${issue.message}` } : { file, message: issue.message, ...locate(segments, key) };
  };
  const validatePipeline = compilePipelineValidator();
  if (!validatePipeline(data)) {
    for (const described of describeAjvErrors(validatePipeline.errors ?? [], data)) {
      issues.push({ ...stripSegments(described), ...place(described, described.segments, described.atKey) });
    }
  }
  // Go on checking every stage that is well-formed enough, so that all problems show at once.
  const isRecord = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v);
  if (!isRecord(data) || !isRecord(data.stages)) return { ok: false, issues };
  const pipelineFile = data as unknown as PipelineFile;
  const rawStages = data.stages as Record<string, unknown>;
  const ids = Object.keys(rawStages);
  let graphComplete = true;
  const needs = new Map<string, string[]>();
  const stages: TemplateStage[] = [];

  for (const id of ids) {
    const raw = rawStages[id];
    if (!isRecord(raw) || typeof raw.uses !== 'string') {
      graphComplete = false;
      continue; // reported by the schema
    }
    const stage = raw as PipelineFile['stages'][string];
    const definition = Object.prototype.hasOwnProperty.call(registry, stage.uses) ? registry[stage.uses] : undefined;
    const stageNeeds = Array.isArray(stage.needs) && stage.needs.every((n) => typeof n === 'string') ? stage.needs : undefined;
    if (stage.needs !== undefined && !stageNeeds) graphComplete = false;
    needs.set(id, stageNeeds ?? []);
    for (const [index, dep] of (stageNeeds ?? []).entries()) {
      if (dep === id) issues.push({ code: 'self_need', path: `stages.${id}.needs.${index}`, file, message: `stage '${id}' cannot need itself`, ...locate(['stages', id, 'needs', String(index)]) });
      else if (!ids.includes(dep))
        issues.push({
          code: 'unknown_need',
          path: `stages.${id}.needs.${index}`,
          file,
          message: `stage '${id}' needs '${dep}', which is not a stage in this file${didYouMean(dep, ids)}`,
          ...locate(['stages', id, 'needs', String(index)]),
        });
    }
    if (!definition) {
      issues.push({
        code: 'unknown_stage_kind',
        path: `stages.${id}.uses`,
        file,
        message: `unknown stage kind '${stage.uses}'${didYouMean(stage.uses, Object.keys(registry))}; known kinds: ${Object.keys(registry).join(', ')}`,
        ...locate(['stages', id, 'uses']),
      });
      graphComplete = false;
      continue;
    }
    if (stage.with !== undefined && !isRecord(stage.with)) continue; // reported by the schema
    if (stage.matrix !== undefined && (!isRecord(stage.matrix) || !Object.values(stage.matrix).every(Array.isArray))) continue; // reported by the schema
    const matrix = stage.matrix as Record<string, Json[]> | undefined;
    const matrixProblems = matrix ? checkStageMatrix(id, matrix, stage.with ?? {}, definition) : [];
    for (const problem of matrixProblems) {
      const segments = ['stages', id, ...problem.segments];
      issues.push({ code: problem.code, path: segments.join('.'), ...place(problem, segments, problem.segments.length === 2) });
    }
    if (matrixProblems.length) continue;
    const sweep = matrix ? { params: Object.keys(matrix), values: Object.values(matrix) } : undefined;
    const variants = resolveVariants(id, definition, stage.with ?? {}, sweep, baseDir, place, issues);
    if (variants) stages.push({ id, kind: stage.uses, definition, needs: stageNeeds ?? [], line: locate(['stages', id], true).line, ...(sweep ? { sweep } : {}), variants });
  }

  const cycle = graphComplete ? findCycle(needs) : undefined;
  if (cycle) {
    issues.push({
      code: 'cycle',
      path: `stages.${cycle[0]}.needs`,
      file,
      message: `the stages form a cycle: ${[...cycle, cycle[0]].join(' -> ')}; remove one of these needs`,
      ...locate(['stages', cycle[0], 'needs']),
    });
  }
  const byId = new Map(stages.map((s) => [s.id, s]));
  if (cycle || !graphComplete) return { ok: false, issues };
  for (const stage of stages) {
    const upstream = ancestors(needs, stage.id);
    // Every variant of a swept stage must find what it reads.
    for (const type of new Set(stage.variants.flatMap((params) => stage.definition.consumesFor?.(params) ?? stage.definition.consumes))) {
      if (!upstream.some((dep) => !byId.has(dep) || byId.get(dep)!.definition.provides.includes(type))) {
        issues.push({
          code: 'missing_input',
          path: `stages.${stage.id}.needs`,
          file,
          message: `stage '${stage.id}' (${stage.kind}) reads a '${type}', but nothing in its needs provides one; add a stage of kind ${providersOf(type, registry)} to its needs`,
          ...locate(['stages', stage.id, stage.needs.length ? 'needs' : 'uses']),
        });
      }
    }
  }
  if (issues.length) return { ok: false, issues };

  const expanded = expandMatrix(topologicalOrder(needs).map((id) => byId.get(id)!));
  for (const problem of expanded.problems) {
    const segments = ['stages', problem.stage, ...problem.segments];
    issues.push({ code: problem.code, path: segments.join('.'), ...place(problem, segments) });
  }
  if (issues.length) return { ok: false, issues };
  return {
    ok: true,
    warnings: [],
    pipeline: {
      file,
      baseDir,
      name: pipelineFile.name,
      seed: pipelineFile.seed ?? 42,
      backend: pipelineFile.backend ?? 'auto',
      needs: expanded.needs,
      stages: expanded.stages.map((stage) => ({ ...stage, ancestors: ancestors(expanded.needs, stage.id) })),
      ...(expanded.matrix ? { matrix: expanded.matrix } : {}),
    },
  };
}

type Place = (issue: { message: string }, segments: string[], key?: boolean) => Pick<ValidationIssue, 'file' | 'message' | 'line' | 'col' | 'snippet'>;

/**
 * A stage's params, validated and with defaults applied, once per combination of its sweep (once
 * without one); undefined when they break the schema. A problem with a swept param is located at
 * its value in `matrix:`, and reported once however many combinations share it.
 */
function resolveVariants(
  id: string,
  definition: StageDefinition,
  withParams: Record<string, unknown>,
  sweep: { params: string[]; values: Json[][] } | undefined,
  baseDir: string,
  place: Place,
  issues: ValidationIssue[],
): Record<string, unknown>[] | undefined {
  const reported = new Set<string>();
  const variants: Record<string, unknown>[] = [];
  let schemaValid = true;
  (sweep ? combinations(sweep) : [{}]).forEach((combination, index) => {
    const indices = sweep ? combinationIndices(sweep, index) : [];
    const at = (inside: string[]): { segments: string[]; group: string } => {
      const swept = sweep ? sweep.params.indexOf(inside[0]) : -1;
      if (swept < 0) return { segments: ['stages', id, 'with', ...inside], group: ['with', ...inside].join('.') };
      return { segments: ['stages', id, 'matrix', inside[0], String(indices[swept]), ...inside.slice(1)], group: ['matrix', ...inside].join('.') };
    };
    const report = (code: ValidationIssue['code'], inside: string[], problem: { message: string }, key = false) => {
      const { segments, group } = at(inside);
      if (reported.has(`${group}\n${problem.message}`)) return;
      reported.add(`${group}\n${problem.message}`);
      issues.push({ code, path: segments.join('.'), ...place(problem, segments, key) });
    };
    const params = structuredClone({ ...withParams, ...combination });
    const validateParams = compileStageValidator(definition);
    if (!validateParams(params)) {
      for (const described of describeAjvErrors(validateParams.errors ?? [], params)) report(described.code, described.segments, described, described.atKey);
      schemaValid = false;
      return;
    }
    for (const problem of definition.check?.(params) ?? []) report('invalid_param', problem.path.split('.').filter(Boolean), problem);
    for (const problem of definition.checkPaths?.(params, baseDir) ?? []) report('input_not_found', problem.path.split('.').filter(Boolean), problem);
    variants.push(definition.canonicalParams?.(params, baseDir) ?? params);
  });
  return schemaValid ? variants : undefined;
}

function providersOf(type: ArtifactType, registry: StageRegistry): string {
  const kinds = Object.values(registry).filter((d) => d.provides.includes(type)).map((d) => `'${d.kind}'`);
  return kinds.length ? kinds.join(' or ') : `that provides '${type}'`;
}

function stripSegments<T extends { segments?: unknown; atKey?: unknown }>(issue: T): Omit<T, 'segments' | 'atKey'> {
  const { segments: _segments, atKey: _atKey, ...rest } = issue;
  return rest;
}

/** Applies one `--set a.b.c=value` to the document; the value is read as a YAML scalar. */
function applyOverride(doc: Document, override: string): ValidationIssue | undefined {
  const eq = override.indexOf('=');
  const dotted = eq > 0 ? override.slice(0, eq) : '';
  const segments = dotted.split('.');
  if (eq <= 0 || segments.some((s) => !/^[A-Za-z0-9_-]+$/.test(s)))
    return { code: 'bad_set', path: dotted, file: '--set', message: `--set ${override}: expected path=value with a dotted path like stages.tune.with.lr=1e-5` };
  let value: unknown;
  try {
    value = YAML.parse(override.slice(eq + 1));
  } catch (error) {
    return { code: 'bad_set', path: dotted, file: '--set', message: `--set ${override}: the value is not valid YAML: ${(error as Error).message.split('\n')[0]}` };
  }
  if (segments[0] === 'stages' && segments.length > 1) {
    const stagesNode = doc.get('stages', true);
    const known = isMap(stagesNode) ? stagesNode.items.map((p) => String(isScalar(p.key) ? p.key.value : p.key)) : [];
    if (!known.includes(segments[1]) && segments.length > 2)
      return { code: 'bad_set', path: dotted, file: '--set', message: `--set ${override}: no stage '${segments[1]}' in the file${didYouMean(segments[1], known)}; stages: ${known.join(', ')}` };
  }
  try {
    doc.setIn(segments, doc.createNode(value));
  } catch {
    return { code: 'bad_set', path: dotted, file: '--set', message: `--set ${override}: ${dotted} goes through a value that is not a map` };
  }
  return undefined;
}

/** A YAML parser message in the user's terms. */
function explainYamlError(code: string, message: string, text: string, offset: number): string {
  if (code === 'DUPLICATE_KEY') {
    const key = /^\s*([^:#\n]+?)\s*:/.exec(text.slice(offset))?.[1];
    return `the key ${key ? `'${key}' ` : ''}appears twice in the same map; keep one`;
  }
  if (code === 'MULTIPLE_DOCS') return 'the file holds several YAML documents (separated by ---); a pipeline file is one document';
  if (code === 'TAB_AS_INDENT') return 'tabs cannot indent YAML; use spaces';
  return message;
}

/** Source offset of a path in the document (the key when `key` is set), or of its deepest existing parent. */
function offsetOf(doc: Document, segments: string[], key: boolean): number | undefined {
  let node: unknown = doc.contents;
  let offset = (node as Node | null)?.range?.[0];
  for (const [i, segment] of segments.entries()) {
    const last = i === segments.length - 1;
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === segment);
      if (!pair) return offset;
      const keyNode = pair.key as Node;
      if (last && key) return keyNode.range?.[0] ?? offset;
      node = pair.value;
      offset = (node as Node | null)?.range?.[0] ?? keyNode.range?.[0] ?? offset;
    } else if (isSeq(node)) {
      node = node.items[Number(segment)];
      offset = (node as Node | null)?.range?.[0] ?? offset;
    } else {
      return offset;
    }
  }
  return offset;
}
