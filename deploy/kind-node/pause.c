/*
 * Sandbox ("pause") process of the Pods of the locally built Kind node image.
 *
 * Every Pod sandbox needs a process that holds its namespaces open and does nothing else.
 * registry.k8s.io/pause cannot be pulled without a registry, so
 * scripts/e2e/build-kind-node-image.sh compiles this file statically and imports it into the
 * node's containerd under the name kubeadm lists (registry.k8s.io/pause:<tag>). As PID 1 of the
 * sandbox it must:
 *   - exit promptly (status 0) on SIGTERM and SIGINT, so StopPodSandbox does not wait for a
 *     grace period and then SIGKILL;
 *   - reap zombies (SIGCHLD), in case a Pod shares its PID namespace with the sandbox;
 *   - otherwise sleep forever without spinning.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_terminate(int signo) {
  (void)signo;
  _exit(0);
}

static void on_child(int signo) {
  int saved_errno = errno;
  (void)signo;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  errno = saved_errno;
}

static int install(int signo, void (*handler)(int)) {
  struct sigaction action;
  memset(&action, 0, sizeof(action));
  action.sa_handler = handler;
  sigemptyset(&action.sa_mask);
  action.sa_flags = signo == SIGCHLD ? (SA_RESTART | SA_NOCLDSTOP) : 0;
  return sigaction(signo, &action, NULL);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "-v") == 0) {
    puts("hodei kind-node pause");
    return 0;
  }
  if (getpid() != 1) {
    fputs("pause: warning: not running as PID 1\n", stderr);
  }
  if (install(SIGINT, on_terminate) != 0 || install(SIGTERM, on_terminate) != 0 ||
      install(SIGCHLD, on_child) != 0) {
    perror("pause: sigaction");
    return 1;
  }
  for (;;) {
    pause();
  }
}
