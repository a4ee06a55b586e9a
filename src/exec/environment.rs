//! The run environment, built from nothing (SPEC §6.2), in increasing precedence:
//! the always-set names, the situational ones (previous runs, groups), the Jenkins
//! names, then the global, job and trigger `environment`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{Config, Job};
use crate::store::{PreviousRun, PreviousRuns};
use crate::time::epoch_text;

/// Everything about one run that its environment is made of.
pub struct RunContext<'a> {
    pub config: &'a Config,
    pub job: &'a Job,
    pub run_id: &'a str,
    pub run_dir: &'a Path,
    pub schedule_time: f64,
    pub start_time: f64,
    pub trigger_type: &'a str,
    pub concurrency_group: Option<&'a str>,
    pub previous: &'a PreviousRuns,
    /// The trigger's environment, already filtered (SPEC §4.4).
    pub trigger_environment: &'a BTreeMap<String, String>,
    /// The daemon's own `PATH`, if it has one.
    pub daemon_path: Option<&'a str>,
    /// The running user's login name and home, if known.
    pub user: Option<(&'a str, &'a str)>,
}

/// Build the environment of a run. `PWD` is the run dir unless the merged
/// environment names an existing directory as `PWD`; the returned map holds the
/// final `PWD`, which is also the run's working directory.
pub fn build_environment(ctx: &RunContext<'_>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    let data_dir = ctx.config.data_dir.display().to_string();
    let job_dir = ctx.config.data_dir.join("runs").join(&ctx.job.name);
    let run_dir = ctx.run_dir.display().to_string();
    if let Some((logname, home)) = ctx.user {
        set("LOGNAME", logname.to_string());
        set("HOME", home.to_string());
    }
    set(
        "PATH",
        ctx.daemon_path.unwrap_or("/usr/bin:/bin").to_string(),
    );
    set("CI", "true".into());
    set("DSARI", "true".into());
    set("DATA_DIR", data_dir.clone());
    set("JOB_NAME", ctx.job.name.clone());
    set("JOB_DIR", job_dir.display().to_string());
    set("RUN_ID", ctx.run_id.to_string());
    set("RUN_DIR", run_dir.clone());
    set("SCHEDULE_TIME", epoch_text(ctx.schedule_time));
    set("START_TIME", epoch_text(ctx.start_time));
    set("TRIGGER_TYPE", ctx.trigger_type.to_string());
    set(
        "TRIGGER_DIR",
        ctx.config.data_dir.join("trigger").display().to_string(),
    );
    if let Some(group) = ctx.concurrency_group {
        set("CONCURRENCY_GROUP", group.to_string());
    }
    for (prefix, run) in [
        ("PREVIOUS_", &ctx.previous.any),
        ("PREVIOUS_GOOD_", &ctx.previous.good),
        ("PREVIOUS_BAD_", &ctx.previous.bad),
    ] {
        if let Some(run) = run {
            previous_run(&mut set, prefix, run);
        }
    }
    if let Some(group) = &ctx.job.job_group {
        set("JOB_GROUP", group.clone());
    }
    if ctx.job.jenkins_environment {
        set("BUILD_NUMBER", ctx.run_id.to_string());
        set("BUILD_ID", ctx.run_id.to_string());
        set(
            "BUILD_URL",
            format!("file://{}/", run_dir.trim_end_matches('/')),
        );
        set("NODE_NAME", "master".into());
        set(
            "BUILD_TAG",
            format!("dsari-{}-{}", ctx.job.name, ctx.run_id),
        );
        set(
            "JENKINS_URL",
            format!("file://{}/", data_dir.trim_end_matches('/')),
        );
        set("EXECUTOR_NUMBER", "0".into());
        set("WORKSPACE", run_dir.clone());
    }
    for layer in [
        &ctx.config.environment,
        &ctx.job.environment,
        ctx.trigger_environment,
    ] {
        for (k, v) in layer {
            set(k, v.clone());
        }
    }
    let pwd = match env.get("PWD") {
        Some(p) if Path::new(p).is_dir() => p.clone(),
        _ => run_dir,
    };
    env.insert("PWD".into(), pwd);
    env
}

fn previous_run(set: &mut impl FnMut(&str, String), prefix: &str, run: &PreviousRun) {
    set(&format!("{prefix}RUN_ID"), run.run_id.clone());
    set(
        &format!("{prefix}SCHEDULE_TIME"),
        epoch_text(run.schedule_time),
    );
    set(&format!("{prefix}START_TIME"), epoch_text(run.start_time));
    if let Some(stop) = run.stop_time {
        set(&format!("{prefix}STOP_TIME"), epoch_text(stop));
    }
    if let Some(code) = run.exit_code {
        set(&format!("{prefix}EXIT_CODE"), code.to_string());
    }
}
