import { LabIcon } from '@jupyterlab/ui-components';

/** Three connected steps: the side panel's tab icon. */
const svgstr = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 16 16">
  <g class="jp-icon3" fill="#616161">
    <rect x="5" y="1" width="6" height="4" rx="1"/>
    <rect x="1" y="11" width="6" height="4" rx="1"/>
    <rect x="9" y="11" width="6" height="4" rx="1"/>
    <path d="M7.5 5h1v2.5H12V11h-1V8.5H5V11H4V7.5h3.5z"/>
  </g>
</svg>`;

export const pipelineIcon = new LabIcon({ name: 'kale-py:pipeline', svgstr });
