//! drover's example app: answers `/up` for health checks, `/` with a greeting that names its
//! version, `POST /` with the size of the body it got, and `/stream?secs=N` with one line a
//! second for N seconds; listening on `$PORT`. SIGTERM's default action ends it at once; it
//! holds no state, so that is a clean stop.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".into());
    let listener = TcpListener::bind(("127.0.0.1", port.parse::<u16>().expect("PORT is a number")))
        .expect("cannot bind $PORT");
    eprintln!("hello: listening on 127.0.0.1:{port}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || serve(stream));
    }
}

fn serve(stream: TcpStream) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0usize;
        let mut upgrade = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let h = header.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap_or(0);
                }
                if k.eq_ignore_ascii_case("upgrade") && v.trim() == "echo" {
                    upgrade = true;
                }
            }
        }
        let mut body = vec![0u8; content_length];
        if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
            return;
        }
        if upgrade {
            // A protocol switch (like WebSocket's): then echo raw bytes back until EOF.
            let head = "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n";
            if out.write_all(head.as_bytes()).is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            loop {
                match std::io::Read::read(&mut reader, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if out.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let method = request_line.split_whitespace().next().unwrap_or("GET");
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        let version = std::env::var("DROVER_VERSION").unwrap_or_else(|_| "dev".into());
        if let Some(secs) = path.strip_prefix("/stream?secs=") {
            let secs: u64 = secs.parse().unwrap_or(1);
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nx-app-version: {version}\r\n\r\n"
            );
            if out.write_all(head.as_bytes()).is_err() {
                return;
            }
            for i in 0..=secs * 10 {
                let line = format!("tick {i} from version {version}\n");
                if write!(out, "{:x}\r\n{line}\r\n", line.len()).is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            if out.write_all(b"0\r\n\r\n").is_err() {
                return;
            }
            continue;
        }
        let (status, text) = match path {
            "/up" => ("200 OK", "ok\n".to_string()),
            "/" if method == "POST" => (
                "200 OK",
                format!("version {version} got {} bytes\n", body.len()),
            ),
            "/" => {
                let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".into());
                ("200 OK", format!("{greeting} (version {version}, pid {})\n", std::process::id()))
            }
            _ => {
                let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".into());
                ("404 Not Found", format!("{path}: not found ({greeting})\n"))
            }
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-app-version: {version}\r\n\r\n{text}",
            text.len()
        );
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
