//! The C ABI over [`crate::infer`], declared in `include/peerlm.h`: open a model file, generate with a
//! callback per token, score text, read the last error, free.
//!
//! Every function catches Rust panics (an engine bug) and reports them as errors: nothing unwinds into C.
//! Errors are kept per thread, as `errno` is; `peerlm_last_error` returns the calling thread's latest.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::infer::{Model, Options};

/// The opaque handle C holds.
pub struct PeerlmModel(Model);

/// Called with each generated token's bytes (not NUL-terminated; a token may end inside a UTF-8 character).
pub type TokenCallback = Option<unsafe extern "C" fn(bytes: *const c_char, len: usize, user: *mut c_void)>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: &str) {
    // An interior NUL would cut the message short: show it as an escape instead.
    let message = CString::new(message.replace('\0', "\\0")).expect("NULs were replaced");
    LAST_ERROR.with(|last| *last.borrow_mut() = message);
}

/// Runs `body`, turning an error or a panic into `failed` and the thread's last error.
fn guarded<R>(failed: R, body: impl FnOnce() -> Result<R, String>) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => value,
        Ok(Err(message)) => {
            set_error(&message);
            failed
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            set_error(&format!("internal error (a bug in peerlm, please report it): {what}"));
            failed
        }
    }
}

/// A C string argument as UTF-8.
///
/// # Safety
/// `text` must be NULL or point to a NUL-terminated string that stays valid for `'a`.
unsafe fn str_arg<'a>(text: *const c_char, what: &str) -> Result<&'a str, String> {
    if text.is_null() {
        return Err(format!("{what} is NULL"));
    }
    // SAFETY: the caller promises a valid NUL-terminated string.
    let text = unsafe { CStr::from_ptr(text) };
    text.to_str().map_err(|e| format!("{what} is not UTF-8: {e}"))
}

/// A model handle argument.
///
/// # Safety
/// `model` must be NULL or a handle from `peerlm_open` not yet freed, used by one thread at a time.
unsafe fn model_arg<'a>(model: *mut PeerlmModel) -> Result<&'a mut Model, String> {
    // SAFETY: the caller promises a live handle with no other user.
    unsafe { model.as_mut() }.map(|m| &mut m.0).ok_or_else(|| "the model handle is NULL".to_string())
}

/// Opens a model file (memory-mapped); NULL on error (see `peerlm_last_error`).
///
/// # Safety
/// `path` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn peerlm_open(path: *const c_char) -> *mut PeerlmModel {
    guarded(std::ptr::null_mut(), || {
        // SAFETY: forwarded from this function's contract.
        let path = unsafe { str_arg(path, "path") }?;
        let model = Model::open(path).map_err(|e| e.to_string())?;
        Ok(Box::into_raw(Box::new(PeerlmModel(model))))
    })
}

/// Continues `prompt`, calling `on_token` with each new token's bytes; returns the number of tokens
/// generated, or -1 on error. `temperature` 0 is greedy; `top_k` 0 samples among all tokens; generation
/// stops early at the end-of-text token.
///
/// # Safety
/// `model` must be a live handle used by no other thread meanwhile; `prompt` a NUL-terminated string;
/// `on_token` NULL or a function safe to call with `user`.
#[no_mangle]
pub unsafe extern "C" fn peerlm_generate(
    model: *mut PeerlmModel,
    prompt: *const c_char,
    max_new_tokens: usize,
    temperature: f64,
    top_k: usize,
    seed: u64,
    on_token: TokenCallback,
    user: *mut c_void,
) -> i64 {
    guarded(-1, || {
        // SAFETY: forwarded from this function's contract.
        let (model, prompt) = unsafe { (model_arg(model)?, str_arg(prompt, "prompt")?) };
        let options = Options {
            max_new_tokens,
            temperature,
            top_k: (top_k > 0).then_some(top_k),
            seed,
            stop_at_end_of_text: true,
        };
        let tokens = model
            .generate(prompt, &options, |_, bytes| {
                if let Some(callback) = on_token {
                    // SAFETY: the caller promises `on_token` may be called with `user`; the bytes live
                    // through the call.
                    unsafe { callback(bytes.as_ptr().cast(), bytes.len(), user) }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(tokens.len() as i64)
    })
}

/// Scores `text`: writes its summed negative log-likelihood in nats to `*nats` and the number of tokens
/// scored to `*tokens`; returns 0, or -1 on error.
///
/// # Safety
/// `model` must be a live handle used by no other thread meanwhile; `text` a NUL-terminated string;
/// `nats` and `tokens` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn peerlm_score(
    model: *mut PeerlmModel,
    text: *const c_char,
    nats: *mut f64,
    tokens: *mut usize,
) -> i32 {
    guarded(-1, || {
        // SAFETY: forwarded from this function's contract.
        let (model, text) = unsafe { (model_arg(model)?, str_arg(text, "text")?) };
        if nats.is_null() || tokens.is_null() {
            return Err("nats and tokens must not be NULL".into());
        }
        let score = model.score(text);
        // SAFETY: both pointers are non-NULL and the caller promises they are valid for a write.
        unsafe {
            *nats = score.nats;
            *tokens = score.tokens;
        }
        Ok(0)
    })
}

/// The calling thread's last error message ("" if none); valid until this thread's next peerlm call.
#[no_mangle]
pub extern "C" fn peerlm_last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// Frees a model handle; NULL is ignored.
///
/// # Safety
/// `model` must be NULL or a handle from `peerlm_open` not yet freed; it must not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn peerlm_free(model: *mut PeerlmModel) {
    if !model.is_null() {
        // SAFETY: the caller hands back a handle `peerlm_open` made with Box::into_raw, once.
        drop(unsafe { Box::from_raw(model) });
    }
}
