// Package deploy holds the deployment artifacts of progress-sync: the systemd unit
// (systemd/), the Helm chart (helm/progress-sync/) and the container image (docker/). It has
// no code; its tests check those artifacts against the binary they deploy.
package deploy
