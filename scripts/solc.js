#!/usr/bin/env node
// The project's `solc`: a thin CLI over npm's solcjs (WASM) that answers what
// py-solc-x, slither and ape ask of a native solc: --version, --help and
// --standard-json (stdin -> stdout). Diagnostics go to stderr; exit 1 on error.
'use strict';
const path = require('path');
const fs = require('fs');

const root = path.resolve(__dirname, '..');
let solc;
try {
  solc = require(path.join(root, 'node_modules', 'solc'));
} catch (e) {
  process.stderr.write('dsq solc: node_modules/solc is missing; run `npm ci` in ' + root + '\n');
  process.exit(1);
}

function version() {
  // solcjs reports e.g. "0.8.28+commit.7893614a.Emscripten.clang"; native solc prints this banner.
  const v = solc.version().replace('.Emscripten.clang', '.Linux.g++');
  return 'solc, the solidity compiler commandline interface\nVersion: ' + v + '\n';
}

// Directories imports are resolved against, like native solc: --base-path, --include-path,
// the working directory, then this checkout (its node_modules and contracts/).
function optionValues(name) {
  const values = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === name && i + 1 < args.length) values.push(args[i + 1]);
    else if (args[i].startsWith(name + '=')) values.push(args[i].slice(name.length + 1));
  }
  return values;
}

function findImports(importPath) {
  const bases = [...optionValues('--base-path'), ...optionValues('--include-path'), process.cwd(),
    root, path.join(root, 'node_modules'), path.join(root, 'contracts')];
  const candidates = path.isAbsolute(importPath) ? [importPath] : bases.map((b) => path.resolve(b, importPath));
  for (const p of candidates) {
    if (fs.existsSync(p)) return { contents: fs.readFileSync(p, 'utf8') };
  }
  return { error: 'File not found: ' + importPath };
}

function writeAll(text, done) {
  // Write everything before exiting: large outputs (>64 KB) are otherwise truncated on pipes.
  process.stdout.write(text, done);
}

const args = process.argv.slice(2);
if (args.includes('--version')) {
  writeAll(version(), () => process.exit(0));
} else if (args.includes('--help') || args.length === 0) {
  writeAll(version() + '\nUsage: solc --standard-json [--allow-paths ...] [--base-path ...] < input.json\n' +
    '  --standard-json   read Standard JSON input on stdin, write Standard JSON output on stdout\n' +
    '  --version         print the version\n', () => process.exit(0));
} else if (args.includes('--standard-json')) {
  const chunks = [];
  process.stdin.on('data', (c) => chunks.push(c));
  process.stdin.on('end', () => {
    const input = Buffer.concat(chunks).toString('utf8');
    let out;
    try {
      out = solc.compile(input, { import: findImports });
    } catch (e) {
      process.stderr.write('dsq solc: ' + e.message + '\n');
      process.exit(1);
    }
    writeAll(out, () => process.exit(0));
  });
} else {
  process.stderr.write('dsq solc: unsupported arguments: ' + args.join(' ') +
    '\n(only --standard-json, --version and --help are implemented)\n');
  process.exit(1);
}
