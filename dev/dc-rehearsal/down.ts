#!/usr/bin/env node
// npm run dc:down: stops the rehearsal dc:up started and removes its network.
import { packageRoot } from '../../runtime/paths.js';
import { destroyNetwork } from './netns.js';
import { teardownFromStateFile } from './rehearsal.js';
import { REHEARSAL_PLAN, rehearsalWorkDir } from './plan.js';

const found = teardownFromStateFile(rehearsalWorkDir(packageRoot()));
// Namespaces left by a dc:up that died before it wrote its state.
destroyNetwork(REHEARSAL_PLAN);
process.stdout.write(found ? 'rehearsal stopped\n' : 'no rehearsal was running (network cleaned up anyway)\n');
