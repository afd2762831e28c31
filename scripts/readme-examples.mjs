// The code examples of every README (the root's, packages/*'s and apps/*'s), as the packaging
// test compiles and runs them. I/O-free apart from reading the files.
//
// A fenced block's info string is its language, then optional words:
//   ```ts / ```js       a complete program: compiled under strict settings, then run in an
//                       empty scratch directory against the real QEMU (JavaScript as written,
//                       with Node; TypeScript as tsc emits it)
//   ```ts no-run        compiled only (it says what it needs, e.g. a QEMU someone started)
//   ```ts declarations  compiled as a declaration file (signatures)
//   ```sh               shell lines: not run, but install lines (npm install / pnpm add /
//                       yarn add) must name every package the README's examples import
//   ```sh run           run with bash in an empty scratch directory, the packages' commands on PATH
//   ```json             must parse as JSON
//   ``` / ```text       prose in a box (usage text, output): counted, not checked
import { readFile, readdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { join, relative } from 'node:path';

const LANGUAGES = {
  ts: 'ts',
  typescript: 'ts',
  js: 'js',
  javascript: 'js',
  mjs: 'js',
  sh: 'sh',
  bash: 'sh',
  shell: 'sh',
  console: 'sh',
  json: 'json',
  '': 'text',
  text: 'text',
};
const MODES = new Set(['no-run', 'declarations', 'run']);

/** Every README the project publishes or shows first: README.md, packages/NAME/README.md, apps/NAME/README.md. */
export async function findReadmes(root) {
  const found = [];
  if (existsSync(join(root, 'README.md'))) found.push(join(root, 'README.md'));
  for (const parent of ['packages', 'apps']) {
    let dirs = [];
    try {
      dirs = (await readdir(join(root, parent), { withFileTypes: true })).filter((d) => d.isDirectory());
    } catch {
      continue;
    }
    for (const dir of dirs.sort((a, b) => a.name.localeCompare(b.name))) {
      const file = join(root, parent, dir.name, 'README.md');
      if (existsSync(file)) found.push(file);
    }
  }
  return found;
}

/**
 * The fenced code blocks of a markdown text: `{ line, lang, kind, mode, info, code }`, where
 * `line` is the line of the opening fence (1-based), `kind` the normalised language and `mode`
 * one of run / no-run / declarations / undefined. An unknown language or word is an error:
 * a block the harness cannot classify would otherwise go unchecked.
 */
export function extractBlocks(markdown, file = 'README.md') {
  const lines = markdown.split('\n');
  const blocks = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,}|~{3,})(.*)$/.exec(lines[i]);
    if (!open) continue;
    const [, indent, fence, rawInfo] = open;
    const body = [];
    let j = i + 1;
    for (; j < lines.length; j++) {
      const close = new RegExp(`^\\s*${fence[0]}{${fence.length},}\\s*$`).exec(lines[j]);
      if (close) break;
      body.push(lines[j].startsWith(indent) ? lines[j].slice(indent.length) : lines[j]);
    }
    if (j === lines.length) throw new Error(`${file}:${i + 1}: code block never closed`);
    const [lang = '', ...words] = rawInfo.trim().split(/\s+/).filter(Boolean);
    const kind = LANGUAGES[lang.toLowerCase()];
    if (kind === undefined) throw new Error(`${file}:${i + 1}: unknown code block language "${lang}" (one of: ${Object.keys(LANGUAGES).filter(Boolean).join(', ')})`);
    const unknown = words.filter((w) => !MODES.has(w));
    if (unknown.length > 0) throw new Error(`${file}:${i + 1}: unknown word(s) "${unknown.join(' ')}" after the language (one of: ${[...MODES].join(', ')})`);
    const mode = words[0];
    if (mode === 'run' && kind !== 'sh') throw new Error(`${file}:${i + 1}: "run" is for sh blocks (ts and js blocks run unless marked no-run)`);
    if ((mode === 'no-run' || mode === 'declarations') && kind !== 'ts' && kind !== 'js') {
      throw new Error(`${file}:${i + 1}: "${mode}" is for ts and js blocks`);
    }
    blocks.push({ file, line: i + 1, lang, kind, mode, info: rawInfo.trim(), code: `${body.join('\n')}\n` });
    i = j;
  }
  return blocks;
}

/** What the harness does with a block: 'run', 'compile', 'declarations', 'shell', 'shell-run', 'json' or 'text'. */
export function actionOf(block) {
  if (block.kind === 'ts' || block.kind === 'js') {
    if (block.mode === 'declarations') return 'declarations';
    return block.mode === 'no-run' ? 'compile' : 'run';
  }
  if (block.kind === 'sh') return block.mode === 'run' ? 'shell-run' : 'shell';
  return block.kind;
}

const BUILTINS = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));

/** Package names a piece of code imports or requires (not Node's own modules, not relative paths). */
export function importedPackages(code) {
  const names = new Set();
  const patterns = [
    /\bimport\s+(?:type\s+)?(?:[^'";]*?\s+from\s+)?['"]([^'"]+)['"]/g,
    /\bexport\s+(?:type\s+)?[^'";]*?\s+from\s+['"]([^'"]+)['"]/g,
    /\b(?:require|import)\(\s*['"]([^'"]+)['"]\s*\)/g,
  ];
  for (const pattern of patterns) {
    for (const match of code.matchAll(pattern)) {
      const specifier = match[1];
      if (specifier.startsWith('.') || specifier.startsWith('/') || BUILTINS.has(specifier) || specifier.startsWith('node:')) continue;
      const parts = specifier.split('/');
      names.add(specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]);
    }
  }
  return [...names].sort();
}

/** The install commands of shell blocks: `{ line, manager, packages }` for npm install / npm i / pnpm add / yarn add. */
export function installLines(blocks) {
  const found = [];
  for (const block of blocks.filter((b) => b.kind === 'sh')) {
    block.code.split('\n').forEach((text, offset) => {
      const command = text.replace(/#.*$/, '').trim();
      const match = /^(npm\s+(?:install|i|add)|pnpm\s+add|yarn\s+add)\s+(.*)$/.exec(command);
      if (!match) return;
      const manager = match[1].split(/\s+/)[0];
      const packages = match[2].split(/\s+/).filter((word) => word !== '' && !word.startsWith('-'));
      found.push({ line: block.line + 1 + offset, manager, packages });
    });
  }
  return found;
}

/** A README with its blocks, the packages its examples import and its install lines. */
export async function readReadme(root, file) {
  const markdown = await readFile(file, 'utf8');
  const name = relative(root, file);
  const blocks = extractBlocks(markdown, name);
  const imports = [...new Set(blocks.filter((b) => b.kind === 'ts' || b.kind === 'js').flatMap((b) => importedPackages(b.code)))].sort();
  return { file, name, markdown, blocks, imports, installs: installLines(blocks) };
}

/**
 * Problems with a README's install lines: there must be one when its examples import packages,
 * and each must name every package they import (pnpm, and yarn in Plug'n'Play mode, give a
 * project only what it lists; npm and yarn's node_modules happen to hoist the rest).
 */
export function installProblems(readme) {
  if (readme.imports.length === 0) return [];
  if (readme.installs.length === 0) return [`no install line (npm install / pnpm add / yarn add) for ${readme.imports.join(', ')}`];
  const problems = [];
  for (const install of readme.installs) {
    const missing = readme.imports.filter((name) => !install.packages.includes(name));
    if (missing.length > 0) problems.push(`${readme.name}:${install.line}: ${install.manager} line lacks ${missing.join(', ')}, which the examples import`);
  }
  return problems;
}

/** A file-name-safe label for a block: `packages-client-README-22`. */
export function blockLabel(block) {
  return `${block.file.replace(/\.md$/, '').replace(/[^A-Za-z0-9]+/g, '-')}-${block.line}`;
}
