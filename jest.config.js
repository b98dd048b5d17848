const jestJupyterLab = require('@jupyterlab/testutils/lib/jest-config');

// ESM-only packages that must go through babel. The extension template's
// shorter list fails as soon as a test imports @jupyterlab/notebook
// (ui-components -> @jupyter/react-components is ESM), so keep
// @jupyterlab/testing's full list.
const esModules = [
  '@codemirror',
  '@marijn',
  '@microsoft',
  '@jupyter/react-components',
  '@jupyter/web-components',
  '@jupyter/ydoc',
  '@jupyterlab/',
  'color',
  'exenv-es6',
  'lib0',
  'marked',
  'nanoid',
  'vscode-ws-jsonrpc',
  'y-protocols',
  'y-websocket',
  'yjs'
].join('|');

const baseConfig = jestJupyterLab(__dirname);

module.exports = {
  ...baseConfig,
  automock: false,
  // The base config also writes junit.xml; the exit code is all CI needs.
  reporters: ['default'],
  // The built labextension holds a copy of package.json, which jest-haste
  // reports as a naming collision; virtualenvs are not ours to scan.
  modulePathIgnorePatterns: [
    '<rootDir>/kale_py/labextension',
    '<rootDir>/lib',
    '<rootDir>/.venv',
    '<rootDir>/.venv-plain'
  ],
  testRegex: 'labextension/src/.*/.*.spec.ts[x]?$',
  transformIgnorePatterns: [`/node_modules/(?!${esModules}).+`]
};
