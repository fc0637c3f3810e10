//! Conversions between the agent's errors and the wire: gRPC statuses and
//! the `ErrorKind` carried in a failed `TaskResponse`.

use crate::task::TaskError;
use proto::ErrorKind;
use tonic::{Code, Status};

pub fn error_to_status(e: &TaskError) -> Status {
    let code = match e {
        TaskError::InvalidInput(_) => Code::InvalidArgument,
        TaskError::UnsupportedTaskType(_) => Code::Unimplemented,
        TaskError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        TaskError::Overloaded(_) => Code::ResourceExhausted,
        TaskError::Unavailable(_) => Code::Unavailable,
        TaskError::Internal(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// A status from the server (or the gRPC stack) as a task error.
pub fn status_to_error(s: &Status) -> TaskError {
    let msg = s.message().to_string();
    match s.code() {
        Code::InvalidArgument | Code::OutOfRange => TaskError::InvalidInput(msg),
        Code::Unimplemented => TaskError::UnsupportedTaskType(msg),
        Code::DeadlineExceeded | Code::Cancelled => TaskError::DeadlineExceeded(msg),
        Code::ResourceExhausted => TaskError::Overloaded(msg),
        Code::Unavailable | Code::Unknown => TaskError::Unavailable(msg),
        _ => TaskError::Internal(format!("{:?}: {msg}", s.code())),
    }
}

pub fn error_from_kind(kind: i32, msg: String) -> TaskError {
    match ErrorKind::try_from(kind).unwrap_or(ErrorKind::Unspecified) {
        ErrorKind::InvalidInput => TaskError::InvalidInput(msg),
        ErrorKind::UnsupportedTaskType => TaskError::UnsupportedTaskType(msg),
        ErrorKind::DeadlineExceeded => TaskError::DeadlineExceeded(msg),
        ErrorKind::Overloaded => TaskError::Overloaded(msg),
        ErrorKind::Unavailable => TaskError::Unavailable(msg),
        ErrorKind::Internal | ErrorKind::Unspecified => TaskError::Internal(msg),
    }
}

/// A failed response carrying `e` (used where errors travel in-band).
pub fn error_response(task_id: &str, e: &TaskError) -> proto::TaskResponse {
    proto::TaskResponse {
        task_id: task_id.to_string(),
        success: false,
        error_message: e.to_string(),
        error_kind: e.kind() as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_survive_a_round_trip_through_status_and_kind() {
        let all = [
            TaskError::InvalidInput("x".into()),
            TaskError::UnsupportedTaskType("x".into()),
            TaskError::DeadlineExceeded("x".into()),
            TaskError::Overloaded("x".into()),
            TaskError::Unavailable("x".into()),
        ];
        for e in all {
            let back = status_to_error(&error_to_status(&e));
            assert_eq!(std::mem::discriminant(&back), std::mem::discriminant(&e));
            let r = error_response("t", &e);
            let back = error_from_kind(r.error_kind, r.error_message);
            assert_eq!(std::mem::discriminant(&back), std::mem::discriminant(&e));
        }
    }
}
