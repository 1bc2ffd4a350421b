//! [`MaintenanceTask`]: the handle of the task that
//! [`ResourceManager::spawn_maintenance`](crate::ResourceManager::spawn_maintenance) starts.

use tokio::task::JoinHandle;

/// The maintenance task of
/// [`ResourceManager::spawn_maintenance`](crate::ResourceManager::spawn_maintenance), running
/// on the caller's tokio runtime.
///
/// Dropping the handle stops the task, as [`abort`](Self::abort) does; [`detach`](Self::detach)
/// lets it run until the manager is dropped. Either way it ends when the manager is dropped.
#[derive(Debug)]
#[must_use = "dropping the handle stops the task; call `detach()` to keep it running"]
pub struct MaintenanceTask {
    task: Option<JoinHandle<()>>,
}

impl MaintenanceTask {
    pub(crate) fn new(task: JoinHandle<()>) -> Self {
        Self { task: Some(task) }
    }

    /// Whether the task has ended (the manager was dropped, or the task was stopped).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the task.
    pub fn abort(self) {}

    /// Lets the task run on after the handle is dropped, until the manager is dropped.
    pub fn detach(mut self) {
        self.task = None;
    }

    /// Waits for the task to end: `true` when it ended on its own (the manager was dropped),
    /// `false` when it was stopped or panicked.
    pub async fn join(mut self) -> bool {
        match self.task.take() {
            Some(task) => task.await.is_ok(),
            None => true,
        }
    }
}

impl Drop for MaintenanceTask {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::task::JoinHandle;

    use super::MaintenanceTask;

    fn forever() -> MaintenanceTask {
        MaintenanceTask::new(tokio::spawn(async {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn drop_and_abort_stop_the_task_detach_does_not() {
        let (dropped, aborted, detached) = (forever(), forever(), forever());
        let watch = |t: &MaintenanceTask| t.task.as_ref().map(JoinHandle::abort_handle);
        let (d, a, k) = (watch(&dropped), watch(&aborted), watch(&detached));
        drop(dropped);
        aborted.abort();
        detached.detach();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(d.is_some_and(|h| h.is_finished()));
        assert!(a.is_some_and(|h| h.is_finished()));
        let k = k.expect("a running task");
        assert!(!k.is_finished());
        k.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn join_reports_how_the_task_ended() {
        let done = MaintenanceTask::new(tokio::spawn(async {}));
        assert!(done.join().await);
        let running = forever();
        assert!(!running.is_finished());
        let handle = running.task.as_ref().map(JoinHandle::abort_handle).expect("a running task");
        handle.abort();
        assert!(!running.join().await);
    }
}
